"""GitHub Actions annotations: one `::error file=…,line=…,title=…::message` workflow command per failed snapshot,
at the line of the test's file where it was compared, with the one-line reason. Escaped as GitHub's toolkit
escapes them: `%`, CR and LF in the message; `:` and `,` too in a property."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_llmdet.reports import data

MESSAGE_CHARS = 2000  # of one message: the reason is one line, a token's text may be long


def escape_data(text: str) -> str:
    """A workflow command's message, escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file, title), escaped."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_lines(report: dict[str, Any], where: Callable[[str], str] = str) -> list[str]:
    """One `::error` line per failed or missing snapshot; `where` maps a path as the report gives it (relative to
    where pytest was started) to one relative to the repository's root (GITHUB_WORKSPACE). A snapshot whose
    comparison line is not known points at its golden file."""
    lines = []
    for entry in data.failed(report):
        location = entry.get("location")
        if location:
            properties = f"file={escape_property(where(location['file']))},line={location['line']}"
        else:
            properties = f"file={escape_property(where(entry['file']))}"
        title = f"llm snapshot {entry['name']} of {entry['test']}: {data.label(entry)}"
        message = data.reason(entry)
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 1] + "…"
        lines.append(f"::error {properties},title={escape_property(title)}::{escape_data(message)}")
    return lines


__all__ = ["annotation_lines", "escape_data", "escape_property"]
