"""One snapshot as an HTML card: what failed (or was tolerated) and why, the fingerprint difference and the variant
compared with, then golden and current tokens side by side from just before the first divergence, the diverging
token highlighted, every token shaded by its margin, its candidates shown on hover or click. Every text from
the report is escaped here (`esc`): a token is any string a model wrote."""

from __future__ import annotations

import html
from typing import Any

from pytest_llmdet.divergence import format_margin
from pytest_llmdet.reports import data
from pytest_llmdet.reports.html_assets import CSS

Entry = dict[str, Any]
SHADES = (0.1, 0.5, 2.0)  # margin bounds of the shades m1, m2, m3 (m0: below llm_near_tie; none: m4, unshaded)
_VISIBLE = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def esc(value: Any) -> str:
    """Any value as HTML text (quotes too: safe in an attribute)."""
    return html.escape(str(value), quote=True)


def shown(text: str | None, token_id: int) -> str:
    """A token's text as its chip shows it: line breaks and tabs as symbols, an empty text as ∅, no text as #id."""
    if text is None:
        return f"#{token_id}"
    if text == "":
        return "∅"
    return "".join(_VISIBLE.get(ch, ch) for ch in text)


def shade(margin: float | None, near_tie: float) -> str:
    """The margin's shade class: m0 (fragile: below near_tie), m1-m3 (smaller margins darker), mn (none)."""
    if margin is None:
        return "mn"
    if margin < near_tie:
        return "m0"
    for level, bound in enumerate(SHADES, start=1):
        if margin < bound:
            return f"m{level}"
    return "m4"


def _candidates(token: Entry, position: int, fragile: bool) -> str:
    facts = f"position {position} · id {token['id']} · margin {format_margin(token['margin'])}"
    lines = [f"<span>{esc(facts)}{' · fragile' if fragile else ''}</span>"]
    for candidate_id, text, logprob in token.get("top_k") or ():
        value = "n/a" if logprob is None else f"{logprob:.3f}"
        line = f"{candidate_id} {repr(text) if text is not None else ''} logprob {value}"
        if candidate_id == token["id"]:
            lines.append(f'<span class="chosen">{esc(line)} ◀ chosen</span>')
        else:
            lines.append(f"<span>{esc(line)}</span>")
    return f'<span class="cands" role="tooltip">{"".join(lines)}</span>'


def token_chip(token: Entry, position: int, index: int, near_tie: float) -> str:
    """One token as a button: shaded by its margin, the divergence marked, its ID, margin and candidates inside
    (shown on hover or click)."""
    where = "div" if position == index else "after" if position > index else "same"
    fragile = token["margin"] is not None and token["margin"] < near_tie
    return (f'<button class="tok {where} {shade(token["margin"], near_tie)}" data-pos="{position}">'
            f'{esc(shown(token["text"], token["id"]))}{_candidates(token, position, fragile)}</button>')


def _side(view: Entry, side: str, near_tie: float) -> str:
    tokens = view[side]
    chips = "".join(token_chip(t, view["start"] + i, view["index"], near_tie) for i, t in enumerate(tokens))
    if view["start"] + len(tokens) <= view["index"]:
        chips += '<span class="muted">(end of output)</span>'
    more = view[f"{side}_more"]
    if more:
        chips += f'<span class="muted">… {more} more token(s)</span>'
    return f'<div class="side {side}"><h3>{side}</h3><div class="toks">{chips}</div></div>'


def tokens_html(view: Entry, near_tie: float) -> str:
    """Golden and current side by side (stacked on a narrow screen)."""
    prefix = ""
    if view["start"] and view.get("prefix") is not None:
        prefix = (f'<p class="muted">tokens {view["start"]} and on; before them: '
                  f'<code>{esc(repr(view["prefix"]))}</code></p>')
    return prefix + f'<div class="sides">{_side(view, "golden", near_tie)}{_side(view, "current", near_tie)}</div>'


def _facts(entry: Entry) -> list[str]:
    facts = [f"golden file <code>{esc(entry['file'])}</code>, compared with the {esc(data.variant(entry))} entry"
             + (f" ({esc(entry['compare'])} comparison)" if entry.get("compare") == "tolerant" else "")]
    if entry.get("location"):
        facts.append(f"compared at <code>{esc(entry['location']['file'])}:{entry['location']['line']}</code>")
    first = data.first_divergence(entry)
    if first is not None:
        facts.append(f"first divergence at token {first['index']}: {esc(data.flip(entry))}, margins golden / "
                     f"current {esc(data.margins(entry))}")
    divergence = entry.get("divergence") or {}
    facts += [esc(line) for line in [divergence.get("checked")] + list(divergence.get("notes") or []) if line]
    facts += [f"input changed: {esc(c['field'])}: {esc(c['old'])} → {esc(c['new'])}"
              for c in divergence.get("input_changes") or []]
    changes = entry.get("environment_changes")
    if changes:
        facts.append("the environment differs from the one recorded: " + "; ".join(f"<code>{esc(c)}</code>"
                                                                                     for c in changes))
    elif changes is not None:
        facts.append("the environment is the one recorded")
    if entry.get("error"):
        facts.append(f"<pre>{esc(entry['error'])}</pre>")
    return facts


def card(entry: Entry, near_tie: float, open_: bool = False) -> str:
    """The card of one failed or tolerated snapshot."""
    status = "tolerated" if entry["status"] == "passed" else entry["status"]
    first = data.first_divergence(entry)
    where = "" if first is None else f" · token {first['index']}"
    summary = (f'<span class="badge {esc(status)}">{esc(status.upper())}</span> <strong>{esc(data.label(entry))}'
               f'</strong>{where} · <code>{esc(entry["test"])}</code> [{esc(entry["name"])}] · variant '
               f'{esc(data.variant(entry))}')
    body = '<ul class="facts">' + "".join(f"<li>{fact}</li>" for fact in _facts(entry)) + "</ul>"
    if entry.get("tokens"):
        body += tokens_html(entry["tokens"], near_tie)
        if not any(t.get("top_k") for t in entry["tokens"]["golden"] + entry["tokens"]["current"]):
            body += ('<p class="muted">No top-k candidates recorded: an exact comparison records margins only '
                     "(--llm-compare tolerant records them).</p>")
    if entry.get("text_diff"):
        body += "<h3>text diff</h3><pre>" + esc("\n".join(entry["text_diff"])) + "</pre>"
    return (f'<details class="card"{" open" if open_ else ""}><summary>{summary}'
            f'</summary><div class="body">{body}</div></details>')


def fragment(entry: Entry, near_tie: float) -> str:
    """A card with its style sheet, for another page (pytest-html's extras)."""
    return f'<div class="llmdet"><style>{CSS}</style>{card(entry, near_tie, open_=True)}</div>'


__all__ = ["SHADES", "card", "esc", "fragment", "shade", "shown", "token_chip", "tokens_html"]
