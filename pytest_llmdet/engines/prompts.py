"""What a prompt may be, checked before any tokenizer or chat template sees it: a string, or chat messages
whose role and content are strings. A bad one raises PromptError naming the message and the field; a good one
comes back as plain data (lists, dicts, strings), the form a golden file stores and reads back."""

from __future__ import annotations

import math
from typing import Any

from pytest_llmdet.generation import Prompt

EXAMPLE = "{'role': 'user', 'content': 'Hi'}"


class PromptError(ValueError):
    """A prompt is not a string or a list of chat messages, or does not fit the model."""


def check_prompt(prompt: Any) -> Prompt:
    """`prompt` validated and as plain data: a str as it is, chat messages (a list or tuple of dicts) as a new
    list of new dicts with tuples turned into lists. PromptError says what is wrong and where."""
    __tracebackhide__ = True  # a PromptError shows none of the frames of this module
    if isinstance(prompt, str):
        _check_text(prompt, "the prompt")
        return prompt
    if not isinstance(prompt, (list, tuple)):
        raise PromptError(f"a prompt is a string or a list of chat messages like [{EXAMPLE}], "
                          f"not {type(prompt).__name__}")
    if not prompt:
        raise PromptError(f"a chat prompt needs at least one message, like [{EXAMPLE}]")
    checked = []
    for index, message in enumerate(prompt):  # a loop, not a comprehension: no extra frame in the traceback
        checked.append(_check_message(message, index))
    return checked


def _check_message(message: Any, index: int) -> dict[str, Any]:
    __tracebackhide__ = True
    where = f"chat prompt: messages[{index}]"
    if not isinstance(message, dict):
        hint = " (one prompt per call: call llm.generate once per string)" if isinstance(message, str) else ""
        raise PromptError(f"{where} is {_short(message)} ({type(message).__name__}), not a dict like {EXAMPLE}{hint}")
    for key in message:
        if not isinstance(key, str):
            raise PromptError(f"{where} has the key {key!r}: the keys of a message are strings")
    for field in ("role", "content"):
        if field not in message:
            raise PromptError(f"{where} has no {field!r}; a message is a dict like {EXAMPLE}")
        value = message[field]
        if not isinstance(value, str):
            hint = "; decode it first" if isinstance(value, (bytes, bytearray)) else ""
            raise PromptError(f"{where}[{field!r}] must be a string, not {type(value).__name__} "
                              f"({_short(value)}){hint}")
    return _plain(message, where)


def _plain(value: Any, where: str) -> Any:
    __tracebackhide__ = True
    # Other fields (a name, tool calls) reach the chat template and the golden file as they are: JSON data only.
    if isinstance(value, str):
        _check_text(value, where)
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PromptError(f"{where} is {value}, which a golden file cannot store (JSON has no {value})")
        return value
    if isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            items.append(_plain(item, f"{where}[{i}]"))
        return items
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise PromptError(f"{where} has the key {key!r}: keys in a prompt are strings")
        plain = {}
        for key, item in value.items():
            plain[key] = _plain(item, f"{where}[{key!r}]")
        return plain
    raise PromptError(f"{where} is {type(value).__name__} ({_short(value)}), which a golden file cannot store; "
                      "a prompt holds strings, numbers, lists and dicts")


def _check_text(text: str, where: str) -> None:
    __tracebackhide__ = True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PromptError(f"{where} has a lone surrogate {text[error.start]!r} at index {error.start}, which "
                          "UTF-8 cannot encode (no tokenizer can); fix the string") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def encode_prompt(tokenizer: Any, prompt: Prompt, model_name: str) -> list[int]:
    """Token IDs of a prompt, always with the model's own (local) tokenizer, so that every engine is given
    the same IDs: a string as the tokenizer encodes it, chat messages rendered with the tokenizer's chat
    template and the generation prompt. The prompt is checked first (PromptError)."""
    prompt = check_prompt(prompt)
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(f"model {model_name!r} has no chat template; pass the prompt as a string")
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])
