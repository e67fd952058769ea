"""Prompts: a bad one is refused before any tokenizer or chat template sees it, with a PromptError naming the
message and the field; a good one is recorded as plain data, the form its golden file reads back."""

import pytest

from pytest_llmdet.engines.prompts import PromptError, check_prompt

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
    result = pytester.runpytest("--llm-snapshot-update", "-p", "no:cacheprovider")
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
    first = pytester.runpytest("--llm-snapshot-update", "-p", "no:cacheprovider")
    first.stdout.fnmatch_lines(["0 passed, 0 failed, 1 written, 0 updated, 0 deleted, 0 unused"])
    golden = pytester.path / "__llm_snapshots__/test_tuple/test_chat.json"
    written = golden.read_bytes()
    again = pytester.runpytest("--llm-snapshot-update", "-p", "no:cacheprovider")
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
