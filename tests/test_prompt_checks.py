"""Prompts: a bad one is refused before any tokenizer or chat template sees it, with a PromptError naming the
message and the field; a good one is recorded as plain data, the form its golden file reads back."""

import json

import pytest
from sessions import SNAPSHOTS, run
from transformers import AutoTokenizer

from pytest_llmdet.engines.prompts import PromptError, check_prompt
from pytest_llmdet.engines.sources import EMBEDDED_MODEL_DIR
from pytest_llmdet.golden.store import read_golden

pytestmark = pytest.mark.usefixtures("only_this_plugin")

MSG = "{'role': 'user', 'content': 'Hi'}"


def test_bad_prompts_fail_at_the_call_with_the_message_index_and_field(pytester):
    pytester.makepyfile(test_bad_prompts="""
        import pytest

        @pytest.mark.parametrize("prompt", [
            "abc\\ud800def",
            [{"role": "user", "content": "Hi"}, {"role": "assistant"}],
            [{"role": "user", "content": None}],
            [{"role": "user", "content": 42}],
            [{"role": "user", "content": b"Hi"}],
            [{"role": "user", "content": "x\\ud800"}],
            [{"content": "Hi"}],
            ["Hi"],
        ], ids=["surrogate", "missing", "none", "int", "bytes", "chat-surrogate", "no-role", "str-message"])
        def test_bad(llm, llm_snapshot, prompt):
            assert llm.generate(prompt, max_new_tokens=2) == llm_snapshot
    """)
    result = run(pytester, "--llm-snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=8)  # in the call, never at teardown (bytes once failed writing the golden file)
    errors = [line for line in result.stdout.lines if line.startswith("E ")]
    assert [line.split("PromptError: ", 1)[1] for line in errors] == [
        "the prompt has a lone surrogate '\\ud800' at index 3, which UTF-8 cannot encode (no tokenizer can); "
        "fix the string",
        f"chat prompt: messages[1] has no 'content'; a message is a dict like {MSG}",
        "chat prompt: messages[0]['content'] must be a string, not NoneType (None)",
        "chat prompt: messages[0]['content'] must be a string, not int (42)",
        "chat prompt: messages[0]['content'] must be a string, not bytes (b'Hi'); decode it first",
        "chat prompt: messages[0]['content'] has a lone surrogate '\\ud800' at index 1, which UTF-8 cannot encode "
        "(no tokenizer can); fix the string",
        f"chat prompt: messages[0] has no 'role'; a message is a dict like {MSG}",
        f"chat prompt: messages[0] is 'Hi' (str), not a dict like {MSG} (one prompt per call: call llm.generate "
        "once per string)",
    ]
    output = result.stdout.str()
    assert "jinja2" not in output and "TypeError" not in output and "site-packages" not in output
    assert "pytest_llmdet/engines" not in output  # the failure shows the test's own call, not the plugin's frames
    assert not (pytester.path / "__llm_snapshots__").exists()


def test_a_tuple_in_a_chat_prompt_or_a_setting_does_not_make_an_unchanged_output_an_update(pytester):
    pytester.makepyfile(test_tuple="""
        def test_chat(llm, llm_snapshot):
            messages = ({"role": "user", "content": "Hi", "tags": ("a", "b")},)
            assert llm.generate(messages, max_new_tokens=3, suppress_tokens=(5, 6)) == llm_snapshot
    """)
    first = run(pytester, "--llm-snapshot-update", "-p", "no:cacheprovider")
    first.stdout.fnmatch_lines(["0 passed, 0 failed, 1 written, 0 updated, 0 deleted, 0 unused"])
    golden = pytester.path / "__llm_snapshots__/test_tuple/test_chat.json"
    written = golden.read_bytes()
    again = run(pytester, "--llm-snapshot-update", "-p", "no:cacheprovider")
    again.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert golden.read_bytes() == written


def test_a_good_prompt_comes_back_as_plain_data():
    messages = ({"role": "user", "content": "Hi", "tags": ("a", {"k": (1, 2.5, None, True)})},)
    checked = check_prompt(messages)
    assert checked == [{"role": "user", "content": "Hi", "tags": ["a", {"k": [1, 2.5, None, True]}]}]
    assert checked[0] is not messages[0]  # a copy: a test that changes its list later does not change the record
    assert check_prompt("Once upon a time") == "Once upon a time"


@pytest.mark.parametrize(("prompt", "message"), [
    (42, f"a prompt is a string or a list of chat messages like [{MSG}], not int"),
    ([], f"a chat prompt needs at least one message, like [{MSG}]"),
    ([{"role": 3, "content": "Hi"}], "chat prompt: messages[0]['role'] must be a string, not int (3)"),
    ([{"role": "user", "content": "Hi", 1: "x"}], "chat prompt: messages[0] has the key 1: the keys of a message "
                                                  "are strings"),
    ([{"role": "user", "content": "Hi", "name": b"x"}], "chat prompt: messages[0]['name'] is bytes (b'x'), which a "
                                                        "golden file cannot store; a prompt holds strings, numbers, "
                                                        "lists and dicts"),
    ([{"role": "user", "content": "Hi", "w": [float("nan")]}], "chat prompt: messages[0]['w'][0] is nan, which a "
                                                               "golden file cannot store (JSON has no nan)"),
    ([{"role": "user", "content": "Hi", "x": {"y": "\udcff"}}], "chat prompt: messages[0]['x']['y'] has a lone "
                                                                "surrogate '\\udcff' at index 0, which UTF-8 cannot "
                                                                "encode (no tokenizer can); fix the string"),
])
def test_bad_prompts_are_named_precisely(prompt, message):
    with pytest.raises(PromptError) as caught:
        check_prompt(prompt)
    assert str(caught.value) == message


def test_prompts_that_cannot_be_generated_from_fail_with_a_clear_error(pytester):
    pytester.makepyfile(test_prompts="""
        def test_empty(llm):
            llm.generate("")

        def test_too_long(llm):
            llm.generate("word " * 2000)

        def test_empty_chat(llm):
            llm.generate([])
    """)
    result = run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*PromptError: the prompt encodes to no tokens and model * adds no BOS token*",
        "*PromptError: the prompt has * tokens; with max_new_tokens=32 that exceeds the * positions model *",
        "*PromptError: a chat prompt needs at least one message*",
    ])
    output = result.stdout.str()
    assert "site-packages/torch" not in output and "IndexError" not in output


def test_unicode_and_partial_utf8_tokens_are_stored_as_decoded_and_compared_by_token_ids(pytester):
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    lead, trail = tokenizer("ä")["input_ids"]  # byte-level BPE: one token per UTF-8 byte of ä
    other_lead = tokenizer("你")["input_ids"][0]  # the lead byte of another character
    assert tokenizer.decode([lead]) == tokenizer.decode([other_lead]) == "\ufffd"
    pytester.makepyfile(test_text=f"""
        def test_partial(llm, llm_snapshot):
            # a bias makes greedy decoding pick the lead byte, the trailing byte, then the lead byte again
            bias = [[[{lead}], 50.0], [[{lead}, {trail}], 100.0]]
            g = llm.generate("Hello", max_new_tokens=3, sequence_bias=bias)
            assert g.token_ids == [{lead}, {trail}, {lead}]
            assert g.text == "ä\\ufffd" == llm.tokenizer.decode(g.token_ids)
            assert g == llm_snapshot

        def test_unicode(llm, llm_snapshot):
            assert llm.generate("从前 🦊 e\\u0301 שלום", max_new_tokens=8) == llm_snapshot
            text = "你好 🙂👍🏽 e\\u0301 \\u202eRTL\\u202c ﷽\\r\\nline\\u2028sep\\x00"
            assert text == llm_snapshot(name="text")

        def test_lone_surrogate(llm_snapshot):
            assert "a\\ud800b" == llm_snapshot
    """)
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*SnapshotUsageError: the text has a lone surrogate '\\ud800' at index 1*"])
    folder = pytester.path / SNAPSHOTS / "test_text"
    raw = (folder / "test_unicode.json").read_text(encoding="utf-8")
    assert "从前 🦊 e\u0301 שלום" in raw and "你好 🙂👍🏽" in raw  # stored as UTF-8 text, not escaped
    unicode = read_golden(folder / "test_unicode.json")
    assert unicode.snapshots["text"].text == "你好 🙂👍🏽 e\u0301 \u202eRTL\u202c ﷽\r\nline\u2028sep\x00"
    partial = read_golden(folder / "test_partial.json").snapshots["0"]
    assert partial.token_ids == [lead, trail, lead] and partial.text == "ä\ufffd"
    run(pytester, "--llm-snapshot", "-k", "not surrogate").assert_outcomes(passed=2)

    # The same text from different tokens is a different output: token IDs are the truth.
    data = json.loads((folder / "test_partial.json").read_text(encoding="utf-8"))
    data["snapshots"]["0"]["token_ids"][2] = other_lead
    assert tokenizer.decode(data["snapshots"]["0"]["token_ids"]) == "ä\ufffd"
    (folder / "test_partial.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    result = run(pytester, "--llm-snapshot", "-k", "partial")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*first divergence at token 2 of 3 *", f"*golden : {other_lead} *"])
