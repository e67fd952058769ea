"""Examples: golden files. `pytest --llm-snapshot examples/` checks the committed goldens (the CI gate);
`pytest --llm-snapshot-update examples/` records them after an intended change."""

import pytest

PROMPTS = {
    "fairy-tale": "Once upon a time",
    "fable": "The fox and the crow",
    "lion": "The lion and the mouse",
}


@pytest.mark.parametrize("prompt_id", sorted(PROMPTS))
def test_story_openings(llm, llm_snapshot, prompt_id):
    assert llm.generate(PROMPTS[prompt_id]) == llm_snapshot


def test_chat_reply(llm, llm_snapshot):
    reply = llm.generate([{"role": "user", "content": "Tell me a story about a fox."}])
    assert reply == llm_snapshot


def test_several_named_snapshots(llm, llm_snapshot):
    assert llm.generate("The king said", max_new_tokens=16) == llm_snapshot(name="king")
    assert llm.generate("The queen said", max_new_tokens=16) == llm_snapshot(name="queen")
