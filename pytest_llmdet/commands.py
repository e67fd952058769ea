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

from pytest_llmdet.settings import OPTIONS, RERECORD_OPTIONS, url_without_credentials

# Environment variables that change the tokens and that a shell may have set for this one run.
OUTPUT_ENVIRONMENT = ("ATEN_CPU_CAPABILITY",)
_DOUBLE_QUOTED_SPECIAL = re.compile(r'([\\"$`])')
_SHOWN = {"base_url": url_without_credentials}  # a URL's user name and password are never printed


def quoted_id(test_id: str) -> str:
    """A node id as a shell word: in double quotes (as pytest prints ids), with what the shell would expand
    there escaped, so that an id with `$`, a backtick or a quote reaches pytest as it is."""
    return '"' + _DOUBLE_QUOTED_SPECIAL.sub(r"\\\1", test_id) + '"'


@dataclass(frozen=True)
class RerecordCommand:
    """The parts of a re-record command that are the same for every test of a run."""

    environment: tuple[str, ...] = ()  # NAME=value words before `pytest`
    flags: tuple[str, ...] = ()  # the command-line words after `--llm-snapshot-update`

    def line(self, test_ids: Iterable[str], extra_flags: Sequence[str] = ()) -> str:
        """The whole command for `test_ids` (each in double quotes); `extra_flags` are a test's own (its
        comparison's), added unless the run's flags already set that option."""
        return join_command(self.environment_line(), self.flags_line(extra_flags), test_ids)

    def flags_line(self, extra_flags: Sequence[str] = ()) -> str:
        """The flags after `--llm-snapshot-update`, quoted for a shell."""
        given = {word for word in self.flags if word.startswith("-")}
        return " ".join(map(shlex.quote, (*self.flags, *_without_options(list(extra_flags), given))))

    def environment_line(self) -> str:
        """The NAME=value words before `pytest`, quoted for a shell (empty: none)."""
        return " ".join(map(shlex.quote, self.environment))


def join_command(environment: str, flags: str, test_ids: Iterable[str]) -> str:
    """`[NAME=value ...] pytest --llm-snapshot-update [flags] "id" ...`, from the parts `RerecordCommand` gives."""
    words = [environment, "pytest --llm-snapshot-update", flags, *map(quoted_id, test_ids)]
    return " ".join(word for word in words if word)


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
                     rootdir: str | None = None, environ: Mapping[str, str] | None = None) -> RerecordCommand:
    """The run's part of every re-record command. `given` holds each flag's value as given on the command line
    (None: not given); `overrides` the `-o name=value` words; `inifile` and `rootdir` as given with `-c` and
    `--rootdir` (None: not given); `environ` the environment (default: this process's)."""
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
    for override in overrides:
        name = override.partition("=")[0].strip()
        if name.startswith("llm_") and name.removeprefix("llm_") in RERECORD_OPTIONS:
            flags += ["-o", override]
    environment = tuple(f"{name}={environ[name]}" for name in OUTPUT_ENVIRONMENT if environ.get(name))
    return RerecordCommand(environment, tuple(flags))


__all__ = ["OUTPUT_ENVIRONMENT", "RerecordCommand", "join_command", "quoted_id", "rerecord_command"]
