"""MkDocs hooks (mkdocs.yml, `hooks:`): `mkdocs build --strict` fails when the settings table of
docs/llm-fixture.md is not the one scripts/docs_settings.py generates from pytest_llmdet.settings.OPTIONS."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.llmdet")
_SCRIPT = Path(__file__).resolve().parent / "docs_settings.py"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_settings", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "llm-fixture.md":
        return markdown
    generator = _generator()
    try:
        stale = generator.committed(markdown) != generator.table()
    except ValueError as error:
        log.warning(str(error))
        return markdown
    if stale:  # a warning: --strict turns it into a failed build
        log.warning("docs/llm-fixture.md: the settings table is out of date with pytest_llmdet.settings.OPTIONS; "
                    "run python scripts/docs_settings.py")
    return markdown
