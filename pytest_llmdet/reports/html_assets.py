"""The HTML report's inline style sheet and script (no network, no external asset). Every rule is scoped to
`.llmdet`, so that a snapshot card dropped into pytest-html's page keeps its look and changes nothing else.

Colours are never the only signal: the diverging token is outlined, bold and wavy-underlined and marked ▶; a
fragile token (margin below llm_near_tie) is dotted-underlined and marked !; tokens after the divergence have
dashed borders; statuses are words. The margin shading is one hue, darker for a smaller margin, with dark text
on every shade (contrast above 7:1)."""

CSS = """
.llmdet{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#fff;
max-width:1200px;margin:0 auto;padding:12px;overflow-wrap:anywhere}
.llmdet h1{font-size:1.45em;margin:.2em 0}.llmdet h2{font-size:1.2em;margin:1.2em 0 .4em;
border-bottom:1px solid #d0d7de}.llmdet h3{font-size:1em;margin:.8em 0 .3em}
.llmdet code,.llmdet pre,.llmdet .toks{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:.92em}
.llmdet pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:4px;padding:6px 8px;overflow-x:auto;
white-space:pre-wrap}
.llmdet table{border-collapse:collapse;margin:.4em 0;display:block;overflow-x:auto;max-width:100%}
.llmdet th,.llmdet td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top}
.llmdet th{background:#f6f8fa}
.llmdet .muted{color:#57606a}
.llmdet .badge{display:inline-block;border:2px solid #57606a;border-radius:10px;padding:0 7px;font-size:.8em;
font-weight:700;letter-spacing:.03em;background:#fff}
.llmdet .badge.failed,.llmdet .badge.missing{border-style:double;border-width:3px;color:#8c1d18}
.llmdet .badge.tolerated{border-style:dashed;color:#0a3069}
.llmdet details.card{border:1px solid #8c959f;border-radius:6px;margin:10px 0}
.llmdet details.card>summary{cursor:pointer;padding:8px 10px;background:#f6f8fa;border-radius:6px}
.llmdet .body{padding:6px 10px 10px}
.llmdet .facts{margin:.3em 0;padding-left:1.2em}
.llmdet .sides{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-top:.5em}
@media (max-width:700px){.llmdet .sides{grid-template-columns:1fr}.llmdet{padding:6px;font-size:14px}}
.llmdet .side h3{margin:0 0 4px}
.llmdet .toks{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start}
.llmdet .tok{position:relative;border:1px solid #6e7781;border-radius:3px;padding:1px 4px;font:inherit;
color:#1f2328;background:#fff;cursor:pointer;white-space:pre;min-height:1.6em;line-height:1.4}
.llmdet .tok:focus-visible{outline:3px solid #0969da;outline-offset:1px}
.llmdet .tok.m0{background:#f7a24b;text-decoration:underline dotted 2px}
.llmdet .tok.m0::after{content:"!";font-weight:700;margin-left:2px}
.llmdet .tok.m1{background:#fbc58b}.llmdet .tok.m2{background:#fde0bf}.llmdet .tok.m3{background:#fff1e2}
.llmdet .tok.mn{background:repeating-linear-gradient(45deg,#fff,#fff 3px,#eaeef2 3px,#eaeef2 6px)}
.llmdet .tok.after{border-style:dashed}
.llmdet .tok.div{border:3px solid #0a3069;font-weight:700;text-decoration:underline wavy #0a3069 2px}
.llmdet .tok.div::before{content:"▶ ";font-size:.8em}
.llmdet .cands{display:none;position:absolute;left:0;top:calc(100% + 4px);z-index:10;background:#fff;
border:1px solid #57606a;border-radius:4px;padding:4px 6px;min-width:16em;max-width:min(28em,80vw);
box-shadow:0 2px 8px rgba(0,0,0,.25);white-space:normal;text-align:left;font-weight:400;text-decoration:none;
cursor:auto}
.llmdet .cands>span{display:block;white-space:pre-wrap}
.llmdet .cands .chosen{font-weight:700}
.llmdet .tok:hover>.cands,.llmdet .tok.open>.cands{display:block}
@media (max-width:700px){.llmdet .cands{position:fixed;left:8px;right:8px;top:auto;bottom:8px;min-width:0;
max-width:none}}
.llmdet .legend .tok{cursor:default}
.llmdet .legend .toks{gap:8px;margin:.3em 0}
.llmdet .controls button{font:inherit;margin-right:6px}
"""

JS = """
(function () {
  function closeAll(except) {
    document.querySelectorAll('.llmdet .tok.open').forEach(function (t) {
      if (t !== except) { t.classList.remove('open'); t.setAttribute('aria-expanded', 'false'); }
    });
  }
  document.addEventListener('click', function (event) {
    var target = event.target.closest ? event.target.closest('.llmdet .tok') : null;
    if (target && target.closest('.cands') && target.classList.contains('open')) { return; }
    closeAll(target);
    if (target) {
      var open = target.classList.toggle('open');
      target.setAttribute('aria-expanded', open ? 'true' : 'false');
    }
  });
  document.addEventListener('keydown', function (event) {
    if (event.key === 'Escape') { closeAll(null); }
  });
  function setAll(open) {
    document.querySelectorAll('.llmdet details.card').forEach(function (d) { d.open = open; });
  }
  var expand = document.getElementById('llmdet-expand');
  var collapse = document.getElementById('llmdet-collapse');
  if (expand) { expand.addEventListener('click', function () { setAll(true); }); }
  if (collapse) { collapse.addEventListener('click', function () { setAll(false); }); }
})();
"""

__all__ = ["CSS", "JS"]
