"""An error in one line, as messages quote it: the first line of its text, with its type, or of its innermost
cause (an engine's own reason, not the chain of wrappers around it)."""

from __future__ import annotations


def first_line(error: object, default: str = "") -> str:
    """The first line of an error's text (or of any text) once the text is stripped; `default` when it has none."""
    return (str(error).strip().splitlines() or [default])[0]


def named_line(error: BaseException) -> str:
    """`Type: first line`, or the type alone when the error says nothing."""
    text = first_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def cause_line(error: BaseException) -> str:
    """The innermost cause of an error (following `__cause__`, else `__context__`), as `named_line` writes it."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    return named_line(error)


__all__ = ["cause_line", "first_line", "named_line"]
