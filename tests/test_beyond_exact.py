"""Beyond exact match: fragile snapshots, the JSON report and JUnit properties, tolerant comparison,
per-environment variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

STORY = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot
"""
GOLDEN = "__llm_snapshots__/test_story/test_story.json"


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    """In-process runs load only pytest-llmdet (other installed plugins would be re-imported on every run)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester, *args: str):
    """Run pytest in-process on the pytester folder with pytest-llmdet."""
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def golden_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("__llm_snapshots__/**/*.json"))}


# -- 3. fragile snapshots ------------------------------------------------------------------------------------


def test_a_snapshot_recorded_with_a_margin_below_near_tie_is_listed_as_fragile(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    margins = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["margins"]
    smallest = min(m for m in margins if m is not None)
    position = margins.index(smallest)
    before = golden_files(pytester.path)

    pytester.makeini(f"[pytest]\nllm_near_tie = {smallest + 0.001}\n")
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines([
        "*= llm snapshots =*",
        "1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        f"1 fragile snapshot(s): a margin below llm_near_tie {smallest + 0.001} may flip on other hardware*",
        f"  test_story.py::test_story [[]0[]]  token {position} margin {smallest:.4f}  {GOLDEN}",
    ])
    assert golden_files(pytester.path) == before  # listing it changes no file

    pytester.makeini(f"[pytest]\nllm_near_tie = {smallest - 0.001}\n")
    assert "fragile snapshot" not in run(pytester, "--llm-snapshot-update").stdout.str()
    pytester.makeini(f"[pytest]\nllm_near_tie = {smallest + 0.001}\n")
    assert "fragile snapshot" not in run(pytester, "--llm-snapshot").stdout.str()  # listed at record time only


# -- 5. machine-readable report ------------------------------------------------------------------------------

SCHEMA = Path(__file__).parent.parent / "docs" / "llm-report.schema.json"
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def schema_errors(value, schema: dict, root: dict, where: str = "$") -> list[str]:
    """A small JSON Schema validator for the keywords the report schema uses (no dependency needed)."""
    if "$ref" in schema:
        return schema_errors(value, root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root, where)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not schema_errors(value, s, root, where)]
        return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
    errors = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(isinstance(value, _TYPES[t]) and not (isinstance(value, bool) and t in ("integer", "number"))
                   for t in types):
            return errors + [f"{where}: {value!r} is not {types}"]
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += schema_errors(item, sub, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}[{index}]")
    return errors


def validate_report(report: dict) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema_errors(report, schema, schema) == []
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(report, schema)


REPORT_SUITE = """
import pytest

def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot

def test_text(llm_snapshot):
    assert "plain text" == llm_snapshot(name="text")

@pytest.mark.llm_determinism(runs=2)
def test_checked(llm):
    llm.generate("The crow", max_new_tokens=4)
"""


def test_json_report_and_junit_properties_describe_every_snapshot_and_determinism_result(pytester):
    import xml.etree.ElementTree as ElementTree

    pytester.makepyfile(test_story=REPORT_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    golden = pytester.path / GOLDEN
    data = json.loads(golden.read_text())
    original = data["snapshots"]["0"]["token_ids"][5]
    data["snapshots"]["0"]["token_ids"][5] = original + 1
    golden.write_text(json.dumps(data))

    result = run(pytester, "--llm-snapshot", "--llm-report=out/report.json", "--junitxml=junit.xml")
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads((pytester.path / "out/report.json").read_text(encoding="utf-8"))
    validate_report(report)
    assert report["snapshot_mode"] == "check" and report["exit_status"] == 1
    assert report["summary"]["passed"] == 1 and report["summary"]["failed"] == 1
    story, text = report["snapshots"]
    assert (story["test"], story["name"], story["status"], story["file"]) == (
        "test_story.py::test_story", "0", "failed", GOLDEN)
    assert story["variant"] is None and story["compare"] == "exact"
    assert story["fingerprint"]["dtype"] == "float32" and story["fingerprint"]["device_type"] == "cpu"
    divergence = story["divergence"]
    assert divergence["matched"] is False and divergence["golden_length"] == divergence["current_length"] == 12
    assert divergence["first_divergence"]["index"] == 5
    assert divergence["first_divergence"]["golden_token"] == original + 1
    assert divergence["first_divergence"]["current_token"] == original
    assert divergence["first_divergence"]["label"] in ("near-tie", "regression")
    assert (text["name"], text["status"], text["fingerprint"], text["divergence"]) == ("text", "passed", None, None)
    assert report["determinism"] == [{
        "test": "test_story.py::test_checked", "status": "deterministic", "runs": 2, "kind": None,
        "position": None, "distinct_outputs": 1, "detail": None, "factors": {}}]

    cases = {case.get("name"): case for case in ElementTree.parse(pytester.path / "junit.xml").iter("testcase")}
    properties = {name: {p.get("name"): p.get("value") for p in case.iter("property")}
                  for name, case in cases.items()}
    assert properties["test_story"]["llm_snapshot[0]"].startswith(
        f"failed; first divergence at token 5 ({divergence['first_divergence']['label']}): "
        f"golden {original + 1}, current {original}; lengths 12/12")
    assert properties["test_text"] == {"llm_snapshot[text]": "passed"}
    assert properties["test_checked"] == {"llm_determinism": "deterministic in 2 runs"}


def test_json_report_of_a_record_run_lists_fragile_snapshots_and_validates(pytester):
    pytester.makepyfile(test_story=STORY)
    pytester.makeini("[pytest]\nllm_near_tie = 100\n")  # every margin is below: the smallest one is reported
    run(pytester, "--llm-snapshot-update", "--llm-report=report.json").assert_outcomes(passed=1)
    report = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    margins = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["margins"]
    (entry,) = report["snapshots"]
    assert entry["status"] == "written" and entry["divergence"] is None
    assert entry["fragile"]["position"] == margins.index(min(m for m in margins if m is not None))
    assert report["determinism"] == [] and report["snapshot_mode"] == "update"


# -- 2. tolerant comparison ----------------------------------------------------------------------------------


def _flip(pytester, index: int, token: int) -> dict:
    """Put `token` at `index` of the golden snapshot (and mark its text edited); returns the old entry."""
    golden = pytester.path / GOLDEN
    data = json.loads(golden.read_text())
    entry = data["snapshots"]["0"]
    old = json.loads(json.dumps(entry))
    entry["token_ids"][index] = token
    entry["text_lines"][0] = "(edited) " + entry["text_lines"][0]
    golden.write_text(json.dumps(data))
    return old


def test_tolerant_mode_passes_a_near_tie_flip_and_fails_a_real_change(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").assert_outcomes(passed=1)
    entry = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]
    assert [len(step) for step in entry["top_k_ids"]] == [5] * 12
    assert [len(step) for step in entry["top_k_logprobs"]] == [5] * 12
    assert [step[0] for step in entry["top_k_ids"]] == entry["token_ids"]

    # a flip to the runner-up: each side's token is among the other side's top-5
    runner_up = entry["top_k_ids"][5][1]
    _flip(pytester, 5, runner_up)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report=report.json")
    result.assert_outcomes(passed=1)
    (snapshot,) = json.loads((pytester.path / "report.json").read_text())["snapshots"]
    assert snapshot["compare"] == "tolerant" and snapshot["divergence"]["first_divergence"]["label"] == "tolerated"
    assert snapshot["checked"] == (
        "tolerant comparison (vLLM check_logprobs_close rule, lengths checked), top-5: tokens 0..4 identical; "
        f"at token 5 golden {runner_up} is rank 2 of the current top-5 and current {entry['token_ids'][5]} is "
        "rank 1 of the golden top-5; tokens after 5 not compared")
    validate_report(json.loads((pytester.path / "report.json").read_text()))
    run(pytester, "--llm-snapshot").assert_outcomes(failed=1)  # the exact comparison fails on the same file

    # a real change: the golden token is none of the current top-5
    outsider = next(t for t in range(100, 1000) if t not in entry["top_k_ids"][5])
    _flip(pytester, 5, outsider)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*first divergence at token 5 of 12 (outside top-k: a token is not among the other side's best*",
        f"*  golden : {outsider} *",
        "*    top-5 golden : *",
        "*    top-5 current: *",
        f"*at token 5 golden {outsider} is NOT in the current top-5 and current {entry['token_ids'][5]} is "
        "rank 1 of the golden top-5; tokens after 5 not compared",
    ])


def test_tolerant_mode_fails_an_early_eos(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").assert_outcomes(passed=1)
    token = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["token_ids"][5]
    # the same generation, ended by EOS after token 5: identical up to there, then 6 tokens short
    pytester.makepyfile(test_story=STORY.replace("max_new_tokens=12", f"max_new_tokens=12, eos_token_id={token}"))
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*first divergence at token 6 of 12 (length: one output stops where the other goes on)",
        "*tokens 0..5 identical; the current output ends at token 6 before any divergence (golden 12 tokens, "
        "current 6): a length change is a failure",
        "*length: golden 12 tokens (length), current 6 tokens (eos): early EOS",
    ])


MARKED = """
import pytest

@pytest.mark.llm_snapshot(compare="tolerant", top_k=3)
def test_tolerant(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=6) == llm_snapshot

def test_exact(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=6) == llm_snapshot
"""


def test_the_marker_makes_one_test_tolerant_and_only_tolerant_goldens_store_top_k(pytester):
    pytester.makepyfile(test_marked=MARKED)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    folder = pytester.path / "__llm_snapshots__/test_marked"
    tolerant = json.loads((folder / "test_tolerant.json").read_text())["snapshots"]["0"]
    exact = json.loads((folder / "test_exact.json").read_text())["snapshots"]["0"]
    assert [len(step) for step in tolerant["top_k_ids"]] == [3] * 6
    assert "top_k_ids" not in exact and "top_k_logprobs" not in exact
    before = golden_files(pytester.path)

    # a golden without top-k (any v1 file) still reads; identical tokens need none, and since that check passes,
    # a tolerant update writes nothing either (a green gate means an update would write nothing)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*llm_compare tolerant (top-5)*"])
    result = run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant")
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert "top_k_ids" not in json.loads((folder / "test_exact.json").read_text())["snapshots"]["0"]
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    assert golden_files(pytester.path) == before  # no-op updates change no byte; an exact one keeps the top-k

    pytester.makepyfile(test_marked=MARKED.replace("top_k=3", "top_k=0"))
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, errors=1)  # a setup error of that test only
    result.stdout.fnmatch_lines(["*bad argument to @pytest.mark.llm_snapshot: allowed values: an integer >= 1*"])
    result = run(pytester, "--llm-snapshot", "--llm-compare", "close")
    result.stderr.fnmatch_lines(["*bad value 'close' for --llm-compare; allowed values: exact, tolerant*"])


# -- 1. per-environment variants -----------------------------------------------------------------------------

FABLES = """
import pytest

@pytest.mark.parametrize("prompt", ["The fox and the crow", "The lion and the mouse"])
def test_fable(llm, llm_snapshot, prompt):
    assert llm.generate(prompt) == llm_snapshot
"""


def _fable_goldens(root: Path) -> list[Path]:
    return sorted((root / "__llm_snapshots__/test_fables").glob("*.json"))


def test_a_float32_golden_with_a_bfloat16_variant_picks_the_right_one_in_each_dtype(pytester):
    from pytest_llmdet.engines.fingerprint import cpu_capability

    key = f"cpu:bfloat16:{cpu_capability()}"  # the variant key names this CPU's instruction set
    pytester.makepyfile(test_fables=FABLES)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    recorded = {p.name: json.loads(p.read_text()) for p in _fable_goldens(pytester.path)}

    # both outputs diverge in bfloat16 on CPU, so both get a variant (an output that matched would not)
    result = run(pytester, "--llm-snapshot-update", "--llm-snapshot-variant", "--llm-dtype", "bfloat16")
    result.stdout.fnmatch_lines(["0 passed, 0 failed, 0 written, 2 updated, 0 deleted, 0 unused"])
    for path in _fable_goldens(pytester.path):
        data = json.loads(path.read_text())
        old = recorded[path.name]
        assert data["fingerprint"] == old["fingerprint"]  # still the default's: float32
        variants = data["snapshots"]["0"].pop("variants")
        assert data["snapshots"] == old["snapshots"]  # the default is untouched
        assert list(variants) == [key] and variants[key]["token_ids"] != \
            old["snapshots"]["0"]["token_ids"]
    with_variant = golden_files(pytester.path)

    result = run(pytester, "--llm-snapshot", "--llm-snapshot-details", "--llm-report=f32.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*passed  test_fables.py::test_fable?The fox and the crow? ?0?  "
                                 f"*(compared with the default (cpu:float32:{cpu_capability()}))"])
    result = run(pytester, "--llm-snapshot", "--llm-snapshot-details", "--llm-dtype", "bfloat16",
                 "--llm-report=bf16.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*passed  test_fables.py::test_fable?The lion and the mouse? ?0?  "
                                 f"*(compared with variant {key})"])
    for report, variant in (("f32.json", None), ("bf16.json", key)):
        data = json.loads((pytester.path / report).read_text())
        validate_report(data)
        assert [s["variant"] for s in data["snapshots"]] == [variant, variant]
    run(pytester, "--llm-snapshot-update", "--llm-snapshot-variant", "--llm-dtype", "bfloat16").assert_outcomes(
        passed=2)
    assert golden_files(pytester.path) == with_variant  # nothing changed: no byte rewritten

    # a changed variant fails only in its own dtype, and the report names it
    fox = _fable_goldens(pytester.path)[0]
    data = json.loads(fox.read_text())
    data["snapshots"]["0"]["variants"][key]["token_ids"][3] += 1
    fox.write_text(json.dumps(data))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=2)
    result = run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*assert output differs from snapshot '0' in *test_fable*.json, variant {key}",
                                 "*first divergence at token 3 of 32*"])
    assert "the environment differs" not in result.stdout.str()  # the variant was recorded in bf16

    result = run(pytester, "--llm-snapshot", "--llm-snapshot-variant")
    result.stderr.fnmatch_lines(["*--llm-snapshot-variant records a variant, so it needs --llm-snapshot-update*"])


def test_variants_are_chosen_exact_match_first_then_same_device_type_then_default():
    from pytest_llmdet.golden.variants import Environment, choose_variant

    keys = ["cuda:bfloat16", "cuda:float16:8.0", "cpu:bfloat16"]
    default = Environment("cpu", "float32")
    chosen = {env: choose_variant(keys, default, Environment(*env.split(":")))
              for env in ("cuda:float16:8.0", "cuda:float16:9.0", "cuda:float32:8.0", "cpu:float32", "cpu:bfloat16",
                          "cpu:float16", "mps:float32")}
    assert chosen == {
        "cuda:float16:8.0": "cuda:float16:8.0",  # exact
        "cuda:float16:9.0": "cuda:float16:8.0",  # same device type and dtype, another GPU generation
        "cuda:float32:8.0": "cuda:bfloat16",  # same device type: the first such key
        "cpu:float32": None,  # the default was recorded here
        "cpu:bfloat16": "cpu:bfloat16",
        "cpu:float16": None,  # the default and cpu:bfloat16 share only the device type: the default wins
        "mps:float32": None,
    }


# -- 4. pending snapshots and review -------------------------------------------------------------------------

REVIEW_SUITE = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot

def test_two(llm_snapshot):
    first = "first" == llm_snapshot(name="a")
    second = "second" == llm_snapshot(name="b")
    assert first and second
"""
NEW_TEST = """
def test_new(llm_snapshot):
    assert "new" == llm_snapshot
"""


def pending_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.llmdet-pending"))


def review_cli(*args: str, answers: str = "") -> str:
    import io

    from pytest_llmdet.review import main

    out = io.StringIO()
    assert main(list(args), stdin=io.StringIO(answers), stdout=out) == 0, out.getvalue()
    return out.getvalue()


def test_check_runs_leave_pending_files_that_review_accepts_or_rejects_one_by_one(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_review=REVIEW_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    recorded = golden_files(pytester.path)
    story = pytester.path / "__llm_snapshots__/test_review/test_story.json"
    data = json.loads(story.read_text())
    data["snapshots"]["0"]["token_ids"][4] += 1
    story.write_text(json.dumps(data))
    pytester.makepyfile(test_review=REVIEW_SUITE.replace('"first"', '"first!"').replace('"second"', '"second!"')
                        + NEW_TEST)
    before = golden_files(pytester.path)

    run(pytester, "--llm-snapshot").assert_outcomes(failed=3)
    assert golden_files(pytester.path) == before  # goldens untouched
    folder = "__llm_snapshots__/test_review/"
    assert pending_files(pytester.path) == [folder + f"test_{n}.json.llmdet-pending" for n in ("new", "story", "two")]
    listed = json.loads(review_cli("pending", "--json"))
    assert [(item["test"], [(s["name"], s["status"]) for s in item["snapshots"]]) for item in listed] == [
        ("test_review.py::test_new", [("0", "new")]),
        ("test_review.py::test_story", [("0", "changed")]),
        ("test_review.py::test_two", [("a", "changed"), ("b", "changed")]),
    ]
    assert listed[1]["golden_file"] == folder + "test_story.json"

    # reject the new one, accept the story, accept a, skip b
    output = review_cli("review", answers="r\na\na\ns\n")
    assert "[2/4] test_review.py::test_story [0] (changed)" in output
    assert "first divergence at token 4 of 12" in output  # the same report as the failure
    assert output.rstrip().endswith("2 accepted, 1 rejected, 1 skipped")
    after = golden_files(pytester.path)
    assert folder + "test_new.json" not in after
    assert after[folder + "test_story.json"] == recorded[folder + "test_story.json"]  # as the update wrote it
    two = json.loads(after[folder + "test_two.json"])["snapshots"]
    assert (two["a"]["text_lines"], two["b"]["text_lines"]) == (["first!"], ["second"])
    assert pending_files(pytester.path) == [folder + "test_two.json.llmdet-pending"]  # b was skipped

    assert review_cli("reject").strip() == "1 pending snapshot(s) rejected"
    assert pending_files(pytester.path) == [] and golden_files(pytester.path) == after
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=2)  # b and the new test, again pending
    assert review_cli("accept").strip() == "2 pending snapshot(s) accepted"
    run(pytester, "--llm-snapshot").assert_outcomes(passed=3)
    assert pending_files(pytester.path) == []

    # in CI a check run writes nothing
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_review=REVIEW_SUITE + NEW_TEST.replace('"new"', '"newer"'))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=2)
    assert pending_files(pytester.path) == []


def test_pending_json_from_the_command_line(pytester, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_review=REVIEW_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    pytester.makepyfile(test_review=REVIEW_SUITE.replace('"first"', '"first!"'))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=1)
    result = subprocess.run([sys.executable, "-m", "pytest_llmdet", "pending", "--json"], cwd=pytester.path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)
    assert item["test"] == "test_review.py::test_two"
    assert [(s["name"], s["status"]) for s in item["snapshots"]] == [("a", "changed")]
    assert "output differs from snapshot 'a'" in item["snapshots"][0]["report"]
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)  # an update supersedes the pending file
    assert pending_files(pytester.path) == []


# -- what a user sees: reasons, counts that add up, the next command ------------------------------------------


def test_a_tolerant_check_of_a_golden_recorded_without_top_k_names_the_reason_and_a_command_that_works(
        pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")  # no pending files: this test is about the failure report
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)  # exact mode stores no candidates
    entry = _flip(pytester, 5, json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["token_ids"][5] + 1)
    token, margin = entry["token_ids"][5], entry["margins"][5]
    command = 'pytest --llm-snapshot-update --llm-compare tolerant "test_story.py::test_story"'

    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report=report.json")
    result.assert_outcomes(failed=1)
    current = json.loads((pytester.path / "report.json").read_text())["snapshots"][0]["divergence"]
    current_margin = current["first_divergence"]["current_margin"]
    kind = "a near-tie" if min(margin, current_margin) < 0.01 else "a regression"  # either side's margin
    result.stdout.fnmatch_lines([
        f"E       assert output differs from snapshot '0' in {GOLDEN}",
        "E         first divergence at token 5 of 12 (cannot be judged tolerantly: the golden snapshot has no top-k "
        "candidates, it was recorded without --llm-compare tolerant)",
        "E         matched prefix: *",
        f"E           golden : {token + 1} * margin {margin:.4f}",
        f"E           current: {token} *",
        "E         tolerant comparison (vLLM check_logprobs_close rule, lengths checked), top-5: tokens 0..4 "
        "identical; at token 5 the golden snapshot has no top-k candidates to compare with; exact mode calls this "
        f"flip {kind} (golden margin {margin:.4f}, current margin {current_margin:.4f}, llm_near_tie 0.01)",
        f"E         if the change is intended, re-record with: {command}",
    ])
    result.stdout.fnmatch_lines([
        "*= llm snapshots =*",
        "0 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        "1 snapshot(s) could not be compared tolerantly: their golden snapshot has no top-k candidates (it was "
        "recorded without --llm-compare tolerant)",
        f"1 test(s) with changed or missing snapshots. If the change is intended, re-record with: {command}",
    ], consecutive=True)
    assert "outside top-k" not in result.stdout.str()
    assert 'pytest --llm-snapshot-update "' not in result.stdout.str()  # no command that records no candidates
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)
    assert report["snapshots"][0]["divergence"]["first_divergence"]["label"] == "no-top-k"

    # the command given works: it stores the candidates, and the next tolerant check can judge a flip
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant", "test_story.py::test_story")
    recorded = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]
    assert [len(step) for step in recorded["top_k_ids"]] == [5] * 12
    run(pytester, "--llm-snapshot", "--llm-compare", "tolerant").assert_outcomes(passed=1)


def test_a_tolerant_pass_that_diverged_is_counted_in_the_summary_and_shown_in_the_details(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").assert_outcomes(passed=1)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])  # no divergence
    assert "tolerated" not in result.stdout.str()

    entry = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]
    _flip(pytester, 5, entry["top_k_ids"][5][1])  # the runner-up: within top-k on both sides
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "1 passed (1 tolerated), 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        "1 snapshot(s) passed tolerantly although their tokens diverged (each side's token among the other side's "
        "top-k):",
        f"  test_story.py::test_story [[]0[]]  token 5  {GOLDEN}",
    ], consecutive=True)
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)
    assert (report["summary"]["passed"], report["summary"]["tolerated"]) == (1, 1)

    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-snapshot-details")
    result.stdout.fnmatch_lines([
        "1 passed (1 tolerated), 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        "1 snapshot(s) passed tolerantly although their tokens diverged (each side's token among the other side's "
        "top-k); listed below:",
        f"  passed (tolerant: diverged at token 5, within top-k)  test_story.py::test_story [[]0[]]  {GOLDEN}",
    ], consecutive=True)


THREE = """
def test_three(llm_snapshot):
    assert "first" == llm_snapshot(name="a")
    assert "second" == llm_snapshot(name="b")
    assert "third" == llm_snapshot(name="c")

def test_other(llm_snapshot):
    assert "other" == llm_snapshot
"""
THREE_GOLDEN = "__llm_snapshots__/test_three/test_three.json"


def test_snapshots_a_failed_test_never_compared_are_counted_and_listed_as_not_compared(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_three=THREE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    pytester.makepyfile(test_three=THREE.replace('"first"', '"first!"'))

    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "1 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused, 2 not compared",  # 4 snapshots, 4 counted
        '1 test(s) with changed or missing snapshots. If the change is intended, re-record with: pytest '
        '--llm-snapshot-update "test_three.py::test_three"',
        "2 snapshot(s) not compared: their test failed before comparing them; pytest --llm-snapshot-review "
        "compares them all (and keeps each change pending):",
        f"  test_three.py::test_three [[]b[]]  {THREE_GOLDEN}",
        f"  test_three.py::test_three [[]c[]]  {THREE_GOLDEN}",
    ], consecutive=True)
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)
    assert report["summary"]["not_compared"] == 2
    assert report["not_compared"] == [{"test": "test_three.py::test_three", "name": name, "file": THREE_GOLDEN}
                                      for name in ("b", "c")]

    pytester.makepyfile(test_three=THREE.replace('"second"', '"second!"'))  # fails at b: only c is left
    result = run(pytester, "--llm-snapshot", "--llm-snapshot-details")
    result.stdout.fnmatch_lines([
        "2 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused, 1 not compared",
        "*re-record with*",
        "1 snapshot(s) not compared: their test failed before comparing them; pytest --llm-snapshot-review "
        "compares them all (and keeps each change pending); listed below:",
        f"  failed  test_three.py::test_three [[]b[]]  {THREE_GOLDEN}",
        "  passed  test_three.py::test_other [[]0[]]  *",
        f"  passed  test_three.py::test_three [[]a[]]  {THREE_GOLDEN}",
        f"not compared  test_three.py::test_three [[]c[]]  {THREE_GOLDEN}",
    ], consecutive=True)

    pytester.makepyfile(test_three=THREE)
    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.stdout.fnmatch_lines(["4 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert json.loads((pytester.path / "report.json").read_text())["not_compared"] == []


def test_a_check_run_that_left_pending_files_names_the_review_command(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_three=THREE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    pytester.makepyfile(test_three=THREE.replace('"first"', '"first!"'))
    review_line = ("1 pending file(s) keep the new outputs beside their golden files (which are unchanged); accept "
                   "or reject them one by one with: python -m pytest_llmdet review")

    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.stdout.fnmatch_lines(["1 test(s) with changed or missing snapshots. If the change is intended, re-record "
                                 'with: pytest --llm-snapshot-update "test_three.py::test_three"', review_line],
                                consecutive=True)
    assert json.loads((pytester.path / "report.json").read_text())["pending"] == [THREE_GOLDEN + ".llmdet-pending"]
    assert pending_files(pytester.path) == [THREE_GOLDEN + ".llmdet-pending"]

    # the pending file lies outside the folder pytest was started in: the command names its folder
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    result = run(pytester, str(pytester.path / "test_three.py"), "--rootdir", str(pytester.path), "--llm-snapshot")
    folder = pytester.path / "__llm_snapshots__" / "test_three"
    result.stdout.fnmatch_lines([f'{review_line} "{folder}"'])
    monkeypatch.chdir(pytester.path)
    assert review_cli("accept").strip() == "1 pending snapshot(s) accepted"
    result = run(pytester, "--llm-snapshot")
    result.stdout.fnmatch_lines(["4 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert "pending file(s)" not in result.stdout.str()

    monkeypatch.setenv("CI", "true")  # in CI a check run writes no pending file, and names no review
    pytester.makepyfile(test_three=THREE.replace('"first!"', '"first?"'))
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, failed=1)
    assert "pending file(s)" not in result.stdout.str() and pending_files(pytester.path) == []
