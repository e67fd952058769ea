"""What CI shows (docs/ci.md): the GitHub Actions job summary, the annotations on the test's line, the HTML report
and pytest-html's extras, from real runs; the renderers' escaping and bounds as plain functions."""

from __future__ import annotations

import html
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sessions import run, validate_report

from pytest_llmdet.reports import annotations, markdown
from pytest_llmdet.reports import html as html_report
from pytest_llmdet.reports.html_tokens import shade

pytestmark = pytest.mark.usefixtures("only_this_plugin")

GOLDEN = "__llm_snapshots__/test_suite/test_story.json"
SUITE = '''
import pytest


def compare_in_a_helper(llm, llm_snapshot):
    assert llm.generate("The crow", max_new_tokens=6) == llm_snapshot(name="crow")


def test_story(llm, llm_snapshot):
    story = llm.generate("The fox", max_new_tokens=12)
    assert story == llm_snapshot


def test_helper(llm, llm_snapshot):
    compare_in_a_helper(llm, llm_snapshot)


def test_missing(llm, llm_snapshot):
    assert llm.generate("The owl", max_new_tokens=4) == llm_snapshot(name="new")


def test_text(llm_snapshot):
    assert "plain text" == llm_snapshot


def test_same(llm, llm_snapshot):
    assert llm.generate("The hen", max_new_tokens=4) == llm_snapshot
'''


def line_of(source: str, text: str) -> int:
    """The 1-based line of the test file that holds `text`."""
    (line,) = [i for i, content in enumerate(source.splitlines(), start=1) if text in content]
    return line


def tamper(pytester, relative: str, name: str, index: int | None, text: str | None = None) -> int | None:
    """Change the token at `index` of snapshot `name` (and its text), or its text alone; returns the old token."""
    path = pytester.path / relative
    data = json.loads(path.read_text())
    entry = data["snapshots"][name]
    old = None
    if index is not None:
        old = entry["token_ids"][index]
        entry["token_ids"][index] = old + 1
    entry["text_lines"][0] = text if text is not None else "(edited) " + entry["text_lines"][0]
    path.write_text(json.dumps(data))
    return old


@pytest.fixture
def failing(pytester, monkeypatch):
    """A recorded suite with two changed token snapshots, a changed text one, one missing and one passing."""
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_suite=SUITE.replace('llm_snapshot(name="new")', "llm_snapshot"))
    assert run(pytester, "--llm-snapshot-update").ret == 0
    pytester.makepyfile(test_suite=SUITE)  # test_missing now compares a snapshot that was never recorded
    tamper(pytester, GOLDEN, "0", 4)
    tamper(pytester, "__llm_snapshots__/test_suite/test_helper.json", "crow", 2)
    tamper(pytester, "__llm_snapshots__/test_suite/test_text.json", "0", None, "<script>alert(1)</script> | *x*")
    monkeypatch.setenv("CI", "true")  # no pending files
    return pytester


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The Markdown's tables by the heading above each (its count left out), each row as {column: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    heading, header = None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = re.sub(r" \(\d+\)$", "", line.lstrip("#").strip()), None
        elif line.startswith("| ---") or line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [html.unescape(re.sub(r"\\(.)", r"\1", c.strip())) for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if header is None:
                header = cells
                found[heading] = []
            else:
                found[heading].append(dict(zip(header, cells, strict=True)))
    return found


def test_the_job_summary_and_the_annotations_of_a_github_actions_run(failing, monkeypatch):
    summary = failing.path / "step-summary.md"
    summary.write_text("## an earlier step's summary\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(failing, "--llm-snapshot", "--llm-report=report.json")
    assert result.ret == 1
    report = json.loads((failing.path / "report.json").read_text(encoding="utf-8"))
    validate_report(report)  # its new fields (location, tokens, environment_changes, the commands) too
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## an earlier step's summary\n## pytest-llmdet\n")  # appended, never truncated
    assert "**llm snapshots** (check): 1 passed, 4 failed, 0 written" in text

    found = tables(text)
    rows = {(row["test"], row["snapshot"]): row for row in found["Failed snapshots"]}
    assert sorted(rows) == [("test_suite.py::test_helper", "crow"), ("test_suite.py::test_missing", "new"),
                            ("test_suite.py::test_story", "0"), ("test_suite.py::test_text", "0")]
    story = next(e for e in report["snapshots"] if e["test"] == "test_suite.py::test_story")
    first = story["divergence"]["first_divergence"]
    row = rows[("test_suite.py::test_story", "0")]
    assert row["first divergence"] == "4" == str(first["index"])
    golden_text = story["tokens"]["golden"][4 - story["tokens"]["start"]]["text"]
    assert row["golden → current"].startswith(f"{first['golden_token']} {golden_text!r} → {first['current_token']} ")
    assert row["margins golden / current"] == f"{first['golden_margin']:.4f} / {first['current_margin']:.4f}"
    assert row["label"] == first["label"] and row["variant"] == "default"
    assert rows[("test_suite.py::test_missing", "new")]["label"] == "missing"
    assert rows[("test_suite.py::test_text", "0")]["label"] == "text changed"
    assert "```shell\npytest --llm-snapshot-update" in text and report["rerecord_command"] in text

    source = (failing.path / "test_suite.py").read_text(encoding="utf-8")
    errors = [line for line in result.outlines if line.startswith("::error ")]
    expected = {"test_story": line_of(source, "assert story == llm_snapshot"),
                "test_helper": line_of(source, 'assert llm.generate("The crow"'),  # the helper's own line
                "test_missing": line_of(source, 'llm_snapshot(name="new")'),
                "test_text": line_of(source, 'assert "plain text" == llm_snapshot')}
    assert len(errors) == 4
    for test, line in expected.items():
        (annotation,) = [e for e in errors if f"%3A%3A{test}%3A" in e]
        assert annotation.startswith(f"::error file=test_suite.py,line={line},title=llm snapshot ")
    (story_line,) = [e for e in errors if "%3A%3Atest_story%3A" in e]
    assert story_line.endswith(f"::output differs from snapshot '0' in {GOLDEN}: first divergence at token 4 "
                               f"({first['label']}): golden {first['golden_token']}, current "
                               f"{first['current_token']}; lengths 12/12; {row['golden → current']}, margins "
                               f"{row['margins golden / current']}")


def test_a_comparison_made_outside_the_test_file_points_at_the_test_def_line(pytester, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    pytester.makeconftest("""
        import pytest

        @pytest.fixture
        def compared_after(llm, llm_snapshot):
            yield
            assert llm.generate("The owl", max_new_tokens=2) == llm_snapshot  # at teardown: no test frame
    """)
    source = "import os\n\n\ndef test_owl(compared_after):\n    pass\n"
    pytester.makepyfile(test_owl=source)
    result = run(pytester, "--llm-snapshot")
    (annotation,) = [line for line in result.outlines if line.startswith("::error ")]
    assert annotation.startswith(f"::error file=test_owl.py,line={line_of(source, 'def test_owl')},title=")
    assert annotation.endswith("::snapshot '0' is missing from __llm_snapshots__/test_owl/test_owl.json")


def test_no_job_summary_from_a_run_that_uses_no_golden_file(pytester, monkeypatch):
    summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = run(pytester)
    assert result.ret == 0 and not summary.exists()
    assert not [line for line in result.outlines if line.startswith("::")]


def test_the_html_report_and_the_summary_of_two_xdist_workers_equal_the_serial_ones(failing):
    pytest.importorskip("xdist")
    outputs = []
    for workers in ((), ("-p", "xdist", "-n", "2")):
        (failing.path / "summary.md").unlink(missing_ok=True)
        result = run(failing, "--llm-snapshot", *workers, "--llm-report-html=out/report.html",
                     "--llm-summary-md=summary.md")
        assert result.ret == 1
        outputs.append(((failing.path / "out/report.html").read_text(encoding="utf-8"),
                        (failing.path / "summary.md").read_text(encoding="utf-8")))
    assert outputs[0] == outputs[1]
    page, summary = outputs[0]
    assert "The token-level report: out/report.html." in summary
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('<button class="tok div') == 4  # two divergences, golden and current each
    assert_balanced(page)


def test_pytest_html_shows_each_failed_snapshot_as_an_extra(failing):
    pytest.importorskip("pytest_html")
    result = run(failing, "--llm-snapshot", "-p", "pytest_metadata.plugin", "-p", "pytest_html.plugin",
                 "--html=report.html", "--self-contained-html")
    assert result.ret == 1
    page = html.unescape((failing.path / "report.html").read_text(encoding="utf-8")).replace('\\"', '"')
    assert page.count('<div class="llmdet">') == 4  # one card per failed snapshot; the passing one has none
    assert page.count('<button class="tok div') == 4


# -- the renderers, as plain functions ---------------------------------------------------------------------------


class Balance(HTMLParser):
    """Every element the report opens is closed, in order (void elements aside)."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.wrong: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.wrong.append(tag)


def assert_balanced(page: str) -> None:
    parser = Balance()
    parser.feed(page)
    assert parser.wrong == [] and parser.stack == []


def token(i: int, text: str, margin: float | None, top_k: bool) -> dict:
    return {"id": i, "text": text, "margin": margin,
            "top_k": [[i, text, -0.1], [i + 1, "x", -2.5], [i + 2, None, None]] if top_k else None}


def snapshot(n: int, status: str = "failed", top_k: bool = True) -> dict:
    first = {"index": 8, "golden_token": 9, "current_token": 10, "golden_margin": 0.004, "current_margin": 0.2,
             "label": "tolerated" if status == "passed" else "near-tie"}
    view = {"start": 0, "index": 8, "golden_more": 0, "current_more": 0, "prefix": "",
            "golden": [token(i, f"<g{i}>", 0.005 * i, top_k) for i in range(64)],
            "current": [token(i, f"c{i}|`", 0.5 * i, top_k) for i in range(64)]}
    return {"test": f"tests/test_a.py::test_{n:04d}", "name": "0", "status": status, "file": f"g/{n}.json",
            "variant": None, "compare": "tolerant", "checked": None, "fingerprint": {}, "fragile": None,
            "error": None, "text_diff": ["--- golden", "+++ current", "-<b>a</b>", "+b"],
            "location": {"file": "tests/test_a.py", "line": n + 1}, "tokens": view,
            "environment_changes": ["dtype: bfloat16 → float32"],
            "divergence": {"matched": False, "first_divergence": first, "golden_length": 64, "current_length": 64,
                           "golden_finish": "length", "current_finish": "length", "text_changed": True,
                           "notes": [], "checked": None, "input_changes": []}}


def report_of(entries: list[dict], **extra) -> dict:
    counts = {k: 0 for k in ("passed", "failed", "written", "updated", "deleted", "unused", "error", "tolerated",
                             "not_compared")}
    counts["failed"] = sum(e["status"] == "failed" for e in entries)
    counts["passed"] = len(entries) - counts["failed"]
    return {"report_version": 1, "pytest_llmdet": "0", "exit_status": 1, "snapshot_mode": "check",
            "near_tie": 0.01, "summary": counts, "snapshots": entries, "unused": [], "deleted": [], "foreign": [],
            "not_compared": [], "pending": [], "determinism": [], "determinism_unchecked": 0,
            "rerecord_command": "pytest --llm-snapshot-update tests", "review_command": None, **extra}


def passed(n: int) -> dict:
    return {**snapshot(n), "status": "passed", "divergence": None, "tokens": None, "location": None,
            "text_diff": None, "environment_changes": None}


def test_a_report_of_1000_snapshots_is_bounded_and_collapses_the_passing_ones():
    entries = [snapshot(n) for n in range(300)] + [passed(n) for n in range(300, 1000)]
    page = html_report.report_html(report_of(entries))
    assert len(page.encode("utf-8")) < 6_000_000
    assert page.count('<details class="card"') == html_report.DETAIL_LIMIT
    assert page.count('<details class="card" open') == html_report.OPEN_LIMIT
    assert f"<h3>{300 - html_report.DETAIL_LIMIT} more, without their tokens</h3>" in page
    assert "<summary><h2 style=\"display:inline\">Every snapshot (1000)</h2></summary>" in page
    assert "<g5>" not in page and "&lt;g5&gt;" in page and "<b>a</b>" not in page
    assert_balanced(page)

    text = markdown.summary_markdown(report_of(entries), "llm-report.html")
    failed_rows = tables(text)["Failed snapshots"]
    assert len(failed_rows) == markdown.ROW_LIMIT
    assert f"… and {300 - markdown.ROW_LIMIT} more: see the HTML report llm-report.html" in text
    assert failed_rows[0]["golden → current"] == "9 '<g8>' → 10 'c8|`'"  # escaped, and read back as written
    assert "<g8>" not in text and "\\|\\`" in text


def test_the_factor_matrix_and_the_files_are_in_both_reports():
    verdict = {"test": "t.py::test_a", "status": "nondeterministic", "runs": 1, "kind": "batch", "position": 3,
               "distinct_outputs": 2, "detail": "batch changes token 3", "factors": {
                   "batch": {"status": "diverged", "cell": "3", "position": 3, "call": 1, "reference_margin": 0.01,
                             "changed_margin": 0.02, "reference": "alone", "changed": "in the batch",
                             "reason": None, "sensitivity": False},
                   "threads": {"status": "same", "cell": "=", "position": None, "call": None,
                               "reference_margin": None, "changed_margin": None, "reference": None,
                               "changed": None, "reason": None, "sensitivity": False}}}
    report = report_of([], determinism=[verdict], pending=["a/b.json.llmdet-pending"], unused=["a/old.json"])
    found = tables(markdown.summary_markdown(report))
    assert found["Factor matrix"] == [{"test": "t.py::test_a", "batch": "3", "threads": "="}]
    assert found["Determinism"][0]["status"] == "nondeterministic"
    text = markdown.summary_markdown(report)
    assert "- a/b.json.llmdet-pending" in text and "- a/old.json" in text
    assert "1 checked, 0 deterministic, 1 nondeterministic\n" in text
    page = html_report.report_html(report)
    assert "<h3>Factor matrix</h3>" in page and "<strong>3</strong> ✗" in page
    assert "<code>a/b.json.llmdet-pending</code>" in page and "<code>a/old.json</code>" in page


def test_workflow_commands_are_escaped_as_github_reads_them():
    assert annotations.escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert annotations.escape_property("a,b: c%") == "a%2Cb%3A c%25"
    entry = {**snapshot(1), "test": "t.py::test[a,b:c]", "location": {"file": "t,1.py", "line": 7}}
    (line,) = annotations.annotation_lines(report_of([entry]), lambda path: "sub/" + path)
    assert line.startswith("::error file=sub/t%2C1.py,line=7,title=llm snapshot 0 of t.py%3A%3Atest[a%2Cb%3Ac]%3A "
                           "near-tie::output differs")
    assert "\n" not in line and "9 '<g8>' → 10 'c8|`', margins 0.0040 / 0.2000" in line
    no_location = {**entry, "location": None}
    assert annotations.annotation_lines(report_of([no_location]))[0].startswith("::error file=g/1.json,title=")


def test_margins_are_shaded_from_fragile_to_confident():
    assert [shade(m, 0.01) for m in (None, 0.001, 0.05, 0.3, 1.0, 5.0)] == ["mn", "m0", "m1", "m2", "m3", "m4"]


def test_the_comparison_line_is_the_innermost_frame_of_the_test_file():
    from pytest_llmdet.golden.source import comparison_line

    here, line = comparison_line(__file__), sys._getframe().f_lineno
    assert here == line
    assert comparison_line(str(Path(__file__).with_name("not_a_test_file.py"))) is None


# -- the HTML report in a real browser ---------------------------------------------------------------------------

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> tuple[str, object]:
    """Debian's chromium and Playwright's sync API; skips without them, unless LLMDET_REQUIRE_BROWSER=1 (.ci/run
    installs both), where their absence fails."""
    import os
    import shutil

    executable = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [what for what, found in (("chromium", executable), ("playwright", sync_playwright)) if not found]
    if missing and os.environ.get("LLMDET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LLMDET_REQUIRE_BROWSER=1 but {' and '.join(missing)} not installed")
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (.ci/run installs them)")
    return executable, sync_playwright


def test_the_html_report_in_a_browser_highlights_the_divergence_and_shows_candidates_on_click(pytester, tmp_path,
                                                                                             monkeypatch):
    import os
    import shutil

    executable, sync_playwright = chromium()
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_suite=SUITE)
    assert run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").ret == 0  # with top-k candidates
    tamper(pytester, GOLDEN, "0", 4)
    run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report-html=report.html",
        "--llm-report=report.json")
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)  # tokens with their top-k candidates
    story = next(e for e in report["snapshots"] if e["test"] == "test_suite.py::test_story")
    current = story["tokens"]["current"][4 - story["tokens"]["start"]]
    assert current["top_k"]  # recorded by the tolerant comparison
    url = (pytester.path / "report.html").as_uri()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: problems.append(request.url) if request.url != url else None)
            page.goto(url)
            card = page.locator("details.card", has_text="test_suite.py::test_story")
            diverging = card.locator(".side.current .tok.div")
            assert diverging.count() == 1 and diverging.get_attribute("data-pos") == "4"
            style = diverging.evaluate("t => [getComputedStyle(t).borderTopWidth, getComputedStyle(t).fontWeight]")
            assert style == ["3px", "700"]  # outlined and bold, not only coloured
            candidates = diverging.locator(".cands")
            assert not candidates.is_visible()
            page.mouse.move(0, 0)
            diverging.click()
            assert candidates.is_visible() and diverging.get_attribute("aria-expanded") == "true"
            text = candidates.inner_text()
            assert "◀ chosen" in text and all(str(c[0]) in text for c in current["top_k"])
            page.mouse.move(0, 0)
            page.keyboard.press("Escape")
            assert not candidates.is_visible()
            diverging.click()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(url)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
            on_phone = phone.locator("details.card", has_text="test_suite.py::test_story").locator(
                ".side.current .tok.div")
            on_phone.click()  # the candidates open at the bottom of the screen, within its width
            box = on_phone.locator(".cands").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            assert problems == []
        finally:
            browser.close()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LLMDET_SCREENSHOT_DIR"):  # how docs/images/llm-report-html.png is made
        shutil.copy(tmp_path / "report.png", Path(os.environ["LLMDET_SCREENSHOT_DIR"]) / "llm-report-html.png")
