"""The re-record command a failure prints: `pytest --llm-snapshot-update` with everything that shaped the
outputs as this run was given it, so that, run verbatim from the same folder, it records what the check saw.

That is every option of the settings table that shapes outputs (settings.RERECORD_OPTIONS) given on the command
line, the `-o llm_...=` overrides, the ini file (`-c`) and rootdir given, and the environment variable that
chooses torch's CPU kernels. Options that come from the ini file need no flag: the update reads the same file.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pytest_llmdet.settings import OPTIONS
from pytest_llmdet.settings.options import RERECORD_OPTIONS
from pytest_llmdet.settings.values import url_without_credentials

# Environment variables that change the tokens and that a shell may have set for this one run.
OUTPUT_ENVIRONMENT = ("ATEN_CPU_CAPABILITY",)
_DOUBLE_QUOTED_SPECIAL = re.compile(r'([\\"$`])')
_SHOWN = {"base_url": url_without_credentials}  # a URL's user name and password are never printed


def quoted_id(test_id: str) -> str:
    """A node id as a shell word: in double quotes (as pytest prints ids); one with a character a shell would
    expand there (`$`, a backtick, a quote, a backslash, or `!`, which an interactive bash expands even inside
    double quotes) in single quotes instead, so that it reaches pytest as it is."""
    if _DOUBLE_QUOTED_SPECIAL.search(test_id) or "!" in test_id:
        return shlex.quote(test_id)
    return f'"{test_id}"'


@dataclass(frozen=True)
class RerecordCommand:
    """The parts of a re-record command that are the same for every test of a run."""

    environment: tuple[str, ...] = ()  # NAME=value words before `pytest`
    flags: tuple[str, ...] = ()  # the command-line words after `--llm-snapshot-update`
    paths: tuple[str, ...] = ()  # the run's own file and folder arguments: what a command of many tests names

    def line(self, test_ids: Iterable[str], extra_flags: Sequence[str] = (),
             mode: str = "--llm-snapshot-update") -> str:
        """The whole command for `test_ids` (each quoted); `extra_flags` are a test's own (its comparison's),
        added unless the run's flags already set that option; `mode` the run's flag (`--llm-snapshot`: a check)."""
        return join_command(self.environment_line(), self.flags_line(extra_flags), test_ids, mode)

    def flags_line(self, extra_flags: Sequence[str] = ()) -> str:
        """The flags after `--llm-snapshot-update`, quoted for a shell."""
        given = {word for word in self.flags if word.startswith("-")}
        return " ".join(map(shlex.quote, (*self.flags, *_without_options(list(extra_flags), given))))

    def environment_line(self) -> str:
        """The NAME=value words before `pytest`, quoted for a shell (empty: none)."""
        return " ".join(map(shlex.quote, self.environment))


def join_command(environment: str, flags: str, test_ids: Iterable[str], mode: str = "--llm-snapshot-update") -> str:
    """`[NAME=value ...] pytest --llm-snapshot-update [flags] "id" ...`, from the parts `RerecordCommand` gives."""
    words = [environment, f"pytest {mode}", flags, *map(quoted_id, test_ids)]
    return " ".join(word for word in words if word)


def command_targets(test_ids: list[str], paths: Sequence[str], limit: int = 5) -> list[str]:
    """What a command for `test_ids` names so that it runs them all and stays short: the ids themselves (at most
    `limit`), else the files they are in (at most `limit`), else the run's own `paths` (all of them, as pytest
    was given them: none is the rootdir's test paths). An update of a file re-records only what its check failed
    there."""
    if len(test_ids) <= limit:
        return test_ids
    files = list(dict.fromkeys(test_id.split("::", 1)[0] for test_id in test_ids))
    return files if len(files) <= limit else list(paths)


def _without_options(words: list[str], given: set[str]) -> list[str]:
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in given:
            skip = True  # and its value
            continue
        kept.append(word)
    return kept


def rerecord_command(given: Mapping[str, str | None], overrides: Sequence[str] = (), inifile: str | None = None,
                     rootdir: str | None = None, environ: Mapping[str, str] | None = None,
                     paths: Sequence[str] = ()) -> RerecordCommand:
    """The run's part of every re-record command. `given` holds each flag's value as given on the command line
    (None: not given); `overrides` the `-o name=value` words; `inifile` and `rootdir` as given with `-c` and
    `--rootdir` (None: not given); `environ` the environment (default: this process's); `paths` the run's file
    and folder arguments."""
    environ = os.environ if environ is None else environ
    flags: list[str] = []
    if inifile:
        flags += ["-c", inifile]
    if rootdir:
        flags += ["--rootdir", rootdir]
    for option in OPTIONS:
        value = given.get(option.name)
        if option.name in RERECORD_OPTIONS and option.has_flag and value is not None:
            flags += [option.flag, _SHOWN.get(option.name, str)(str(value))]
    for override in overrides:  # every ini option of ours: the snapshot folder, the near-tie threshold too
        if override.partition("=")[0].strip().startswith("llm_"):
            flags += ["-o", override]
    environment = tuple(f"{name}={environ[name]}" for name in OUTPUT_ENVIRONMENT if environ.get(name))
    return RerecordCommand(environment, tuple(flags), tuple(paths))


__all__ = ["OUTPUT_ENVIRONMENT", "RerecordCommand", "command_targets", "join_command", "quoted_id",
           "rerecord_command"]
