"""What each setting may be: the allowed words and bounds, and the parsers that turn the string of a flag or ini
option into its typed value (a ValueError names what is allowed; a SettingsError is the whole message).

Imported at startup, as the option table that uses them (settings/options.py); so is `Record`, the base of the
startup's value types (named tuples)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from operator import itemgetter
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llmdet.vocabulary import FactorName

SNAPSHOT_DIR_DEFAULT = "__llm_snapshots__"
NEAR_TIE_DEFAULT = 0.01
COMPARE_MODES = ("exact", "tolerant")
TOP_K_DEFAULT = 5
RUNS_DEFAULT = 3
DTYPES = ("float32", "bfloat16", "float16", "auto")
DETERMINISTIC_ALGORITHMS = ("warn", "strict", "off")


class _RecordType(type):
    """Makes each annotated name of a Record's body a field: its value in the body, if any, is the default."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
        fields = tuple(namespace.get("__annotations__", ()))
        defaults = {field: namespace.pop(field) for field in fields if field in namespace}
        if any(field not in defaults for field in fields[len(fields) - len(defaults):]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        namespace.update(__slots__=(), _fields=fields, _field_defaults=defaults)
        for index, field in enumerate(fields):
            namespace[field] = property(itemgetter(index), doc=f"Field {index}")
        return super().__new__(mcs, name, bases, namespace)


class Record(tuple, metaclass=_RecordType):
    """A named tuple declared like typing.NamedTuple (annotated fields, defaults, methods, properties), for the
    value types pytest needs at startup (Settings, Option, ...): tuple equality, hashing and unpacking,
    `_replace`, `_asdict`, `_fields` and `_field_defaults` alike. Defining one costs a seventh of a
    typing.NamedTuple (0.23 against 1.68 million instructions for Settings' 22 fields, measured with
    callgrind), and every pytest run in a project with the plugin installed defines six."""

    # _fields (the names, in order) and _field_defaults (by name) are set by _RecordType on each Record

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments but {len(args)} were given")
        values = list(args)
        for field in fields[len(args):]:
            if field in kwargs:
                values.append(kwargs.pop(field))
            elif field in cls._field_defaults:
                values.append(cls._field_defaults[field])
            else:
                raise TypeError(f"{cls.__name__}() missing required argument: {field!r}")
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unexpected or repeated argument(s): {', '.join(kwargs)}")
        return tuple.__new__(cls, values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={v!r}' for f, v in zip(self._fields, self, strict=True))})"

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle
        return tuple(self)

    def _replace(self, **changes: Any) -> Any:
        return type(self)(**{**self._asdict(), **changes})

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))


# The determinism check's factors, in the order the matrix shows them: vocabulary.FactorName's values. Plain
# strings here, at startup (an enum costs about 0.2 ms to define, every run); parse_factors gives the members.
FACTOR_WORDS = ("batch", "cache", "static-cache", "prefix-cache", "attention", "threads", "dtype")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies
ENGINES = ("transformers", "vllm", "openai")  # what generates: engines/transformers.py, vllm.py, openai_server.py
API_KEY_ENV_DEFAULT = "OPENAI_API_KEY"
REQUEST_TIMEOUT_DEFAULT = 60.0  # seconds a request to an OpenAI-compatible server may take
CONCURRENCY_DEFAULT = 32  # requests --llm-prefetch keeps in flight to a server at once
# Arguments of vllm.LLM that other settings own: pytest-llmdet sets them, so that the forced-greedy plan holds.
VLLM_OWNED_ARGS = {
    "model": "--llm-model / llm_model", "tokenizer": "--llm-model / llm_model (prompts are tokenized locally)",
    "dtype": "--llm-dtype / llm_dtype", "trust_remote_code": "--llm-trust-remote-code / llm_trust_remote_code",
    "seed": "pytest-llmdet (greedy needs none; a sampling call sends its own seed=)",
    "generation_config": "pytest-llmdet (\"vllm\": the model's defaults stay out)",
    "logprobs_mode": "pytest-llmdet (processed_logprobs: margins as the transformers engine computes them)",
}
# No compiled regular expressions here: three cost 0.17 ms of every pytest run's startup.
_DEVICES = ("cpu", "auto", "mps", "cuda")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _choice(values: tuple[str, ...]) -> Callable[[str], str]:
    """A parser that accepts one of `values` and names them all otherwise."""
    def parse(value: str) -> str:
        if value not in values:
            raise ValueError(f"allowed values: {', '.join(values)}")
        return value

    return parse


parse_dtype = _choice(DTYPES)


def parse_device(value: str) -> str:
    """Accept cpu, auto, cuda, cuda:N or mps."""
    index = value.removeprefix("cuda:")
    if value not in _DEVICES and not (index != value and index.isascii() and index.isdigit()):
        raise ValueError("allowed values: cpu, auto, cuda, cuda:N, mps")
    return value


def parse_bool(value: str) -> bool:
    """Accept the usual spellings of true and false."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("allowed values: true, false")


# numpy.random.seed takes 0 ... 2**32 - 1 only; a larger seed would pass startup and fail every test.
SEED_MAX = 2**32 - 1
# torch.set_num_threads with far more threads than CPUs can crash the process (100000 segfaults); allow up
# to this many threads per CPU, or THREADS_MAX_UNKNOWN_CPUS in all where os.cpu_count() cannot tell.
THREADS_PER_CPU = 4
THREADS_MAX_UNKNOWN_CPUS = 256


def threads_max() -> int:
    """The most threads `llm_threads` allows: 4 x os.cpu_count(), or 256 where the CPU count is unknown."""
    cpus = os.cpu_count()
    return THREADS_PER_CPU * cpus if cpus else THREADS_MAX_UNKNOWN_CPUS


def _threads_bound() -> str:
    cpus = os.cpu_count()
    if not cpus:
        return "the CPU count of this machine is unknown"
    return f"{THREADS_PER_CPU} x the {cpus} CPUs of this machine"


def _parse_int(minimum: int, maximum: Callable[[], int] | None = None,
               why: Callable[[], str] | None = None) -> Callable[[str], int]:
    """A parser of integers >= `minimum` and, with `maximum` (called at parse time), <= `maximum()`;
    `why` says where the maximum comes from."""
    def parse(value: str) -> int:
        allowed = f"allowed values: an integer >= {minimum}"
        if maximum is not None:
            allowed += f" and <= {maximum()}" + (f" ({why()})" if why is not None else "")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(allowed) from None
        if number < minimum or (maximum is not None and number > maximum()):
            raise ValueError(allowed)
        return number

    return parse


parse_deterministic_algorithms = _choice(DETERMINISTIC_ALGORITHMS)


parse_device_map = _choice(DEVICE_MAPS)


parse_compare = _choice(COMPARE_MODES)


def parse_factors(value: str | list[str] | tuple[str, ...]) -> tuple[FactorName, ...]:
    """Accept `all` or a comma list of factor names (a list of names too); they come back in the matrix's
    order, each once, as vocabulary.FactorName members. An empty value is no factor."""
    from pytest_llmdet.vocabulary import FACTOR_NAMES

    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"factors are names; allowed values: all, or a comma list of {', '.join(FACTOR_WORDS)}")
    names = [n for n in names if n]
    if names == ["all"]:
        return FACTOR_NAMES
    unknown = [n for n in names if n not in FACTOR_WORDS]
    if unknown:
        raise ValueError(f"unknown factor(s) {', '.join(unknown)}; allowed values: all, or a comma list of "
                         f"{', '.join(FACTOR_WORDS)}")
    return tuple(n for n in FACTOR_NAMES if n in names)


parse_engine = _choice(ENGINES)


def parse_base_url(value: str) -> str:
    """Accept an http(s) URL of an OpenAI-compatible API, such as http://127.0.0.1:8000/v1."""
    url = value.strip()
    if not re.match(r"^https?://[^/\s]+", url) or any(ch.isspace() for ch in url):
        raise ValueError("allowed values: the http:// or https:// URL of an OpenAI-compatible API, such as "
                         "http://127.0.0.1:8000/v1")
    return url.rstrip("/")


def url_without_credentials(url: str) -> str:
    """The URL as messages and commands show it: without a user name and password (http://user:secret@host/v1)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if sep else url


def _is_name(text: str) -> bool:
    """Whether `text` is an ASCII identifier: letters, digits and underscores, not starting with a digit."""
    return text.isascii() and text.isidentifier()


def parse_env_name(value: str) -> str:
    """Accept the name of an environment variable (the value is read from the environment, never from here)."""
    name = value.strip()
    if not _is_name(name):
        raise ValueError("allowed values: the name of an environment variable such as OPENAI_API_KEY (the key "
                         "itself never goes in a setting)")
    return name


def parse_timeout(value: str) -> float:
    """Accept a number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise ValueError("allowed values: a number of seconds > 0")
    return number


def parse_engine_args(value: str) -> tuple[tuple[str, Any], ...]:
    """Accept space-separated key=value pairs for vllm.LLM, such as `tensor_parallel_size=2 enforce_eager=true`;
    a value is an integer, a number, true/false/none, JSON in brackets or braces, or else a string. They come
    back sorted by key, each key once."""
    import json
    import shlex

    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"{error}; write key=value pairs separated by spaces") from None
    pairs: dict[str, Any] = {}
    for word in words:
        key, equals, raw = word.partition("=")
        if not equals or not _is_name(key) or key != key.lower():
            raise ValueError(f"{word!r} is not key=value with a lower-case key (an argument of vllm.LLM); write "
                             "pairs such as tensor_parallel_size=2 max_model_len=2048 enforce_eager=true")
        if key in VLLM_OWNED_ARGS:
            raise ValueError(f"{key} is set by {VLLM_OWNED_ARGS[key]}, not by the engine arguments")
        if key in pairs:
            raise ValueError(f"{key} is given twice")
        pairs[key] = _engine_arg_value(raw, json)
    return tuple(sorted(pairs.items()))


def _engine_arg_value(raw: str, json: Any) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    if raw[:1] in "[{":
        try:
            return JsonArgument(json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")))
        except ValueError:
            raise ValueError(f"{raw!r} is not valid JSON") from None
    return raw


class JsonArgument(str):
    """An engine argument given as a JSON object or array (`compilation_config={"level":0}`): kept as its
    canonical JSON text, so that the settings and model specs holding it stay hashable; `engine_arguments`
    gives vllm.LLM the object itself."""

    @property
    def value(self) -> Any:
        import json

        return json.loads(self)


def engine_arguments(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The keyword arguments of vllm.LLM from parse_engine_args's pairs: JSON values as objects again."""
    return {key: value.value if isinstance(value, JsonArgument) else value for key, value in pairs}


parse_count = _parse_int(1)  # runs, new tokens: an integer >= 1
parse_seed = _parse_int(0, lambda: SEED_MAX, lambda: "2**32 - 1, numpy's largest seed")
parse_threads = _parse_int(1, threads_max, _threads_bound)


def parse_concurrency(value: str) -> int:
    """Accept an integer >= 1: requests in flight to a server at once."""
    return parse_count(value)


def parse_top_k(value: str) -> int:
    """Accept an integer >= 1."""
    return parse_count(value)


def parse_near_tie(value: str) -> float:
    """Accept a number >= 0."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:  # NaN too
        raise ValueError("allowed values: a number >= 0")
    return number


def parse_snapshot_dir(folder: str) -> str:
    """Accept a relative folder name below each test module's folder; refuse anything that could put golden
    files outside the project (absolute, `~`, `..`, a drive), on POSIX and Windows alike, or that is the test
    folder itself (every `*.json` in the snapshot folder belongs to pytest-llmdet)."""
    posix, windows = PurePosixPath(folder), PureWindowsPath(folder)
    if posix.is_absolute() or windows.anchor or folder.startswith("~") or ".." in posix.parts \
            or ".." in windows.parts:
        raise SettingsError(
            f"pytest-llmdet: llm_snapshot_dir = {folder!r} would put golden files outside the project root; "
            "use a relative folder name such as __llm_snapshots__ (it is created beside each test module)"
        )
    if not windows.parts:
        raise SettingsError(
            f"pytest-llmdet: llm_snapshot_dir = {folder!r} is the test folder itself; name a folder that "
            "holds only golden files, such as __llm_snapshots__"
        )
    return folder


class SettingsError(ValueError):
    """A setting has a value outside what it allows."""
