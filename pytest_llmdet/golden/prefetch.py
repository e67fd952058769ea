"""--llm-prefetch: the calls a check is going to make, read from the golden files of the tests it runs, are
generated ahead, all at once (one `vllm.LLM.generate` call, or concurrent requests to a server), and a test's
`llm.generate` is answered from them when its prompt tokens and settings are the ones recorded.

No false alarm from batching: a batched result is used only when its tokens equal a recorded golden's; one that
differs is generated again alone, and the test gets (and is judged by) that lone result, whatever it is. A lone
result that differs from the batch's means the engine is not batch-invariant: the summary says so and names the
setting that makes it so. What this cannot see: a changed model whose lone output differs from the golden while
its batched output still equals it (the test then passes on the batched output); on a batch-invariant engine
the two are the same, so there is no such case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.engines.greedy import GenerationArgumentError
from pytest_llmdet.engines.llm import LLM, CallKey, call_key
from pytest_llmdet.engines.prompts import PromptError, check_prompt
from pytest_llmdet.engines.rows import RowOutput, RowRequest
from pytest_llmdet.golden.format import GoldenFile, GoldenFileError, prompt_hash
from pytest_llmdet.golden.store import read_golden

BATCH_INVARIANCE = ("the engine is not batch-invariant (vLLM: set VLLM_BATCH_INVARIANT=1 where it is supported, "
                    "CUDA compute capability 8.0 or newer; SGLang: --enable-deterministic-inference)")


class Source:
    """Where a prefetched call's result came from (Generation.prefetch, the JSON report's `prefetch`)."""

    BATCHED = "batched"  # the batch's result, equal to a recorded golden
    CONFIRMED = "confirmed"  # the batch's differed from the golden; a lone request gave the same tokens
    DISAGREED = "disagreed"  # a lone request gave other tokens than the batch: the lone result is used


@dataclass(frozen=True)
class RecordedCall:
    """One call a golden file recorded: its prompt (as written), the hash of its prompt tokens, its settings
    and the tokens it gave."""

    prompt: Any
    prompt_sha256: str | None
    settings: dict[str, Any]
    token_ids: tuple[int, ...]


def recorded_calls(golden: GoldenFile | None) -> list[RecordedCall]:
    """Every call a golden file recorded with token IDs: each snapshot's default entry and its variants."""
    calls = []
    for snapshot in (golden.snapshots.values() if golden else ()):
        for entry in (snapshot, *snapshot.variants.values()):
            if entry.token_ids is not None and entry.settings:
                calls.append(RecordedCall(entry.prompt, entry.prompt_sha256, dict(entry.settings),
                                          tuple(entry.token_ids)))
    return calls


def golden_calls(path: Path) -> list[RecordedCall]:
    """The recorded calls of the golden file at `path`; none when it is missing or unusable (its test reports
    that itself when it reads it)."""
    try:
        return recorded_calls(read_golden(path))
    except (GoldenFileError, OSError):
        return []


@dataclass
class PrefetchStats:
    """What the prefetches of one process cost and answered (an xdist worker sends it to the controller)."""

    batches: int = 0  # prefetches run (one per model, or per model and test file under xdist)
    sent: int = 0  # distinct recorded calls generated ahead
    seconds: float = 0.0  # the prefetches' time
    skipped: int = 0  # recorded calls not sent: their prompt tokens or settings are not the recorded ones any more
    failed: int = 0  # sent but not answered (the engine refused the call): generated alone by its test
    batched: int = 0  # calls answered with the batch's result
    confirmed: int = 0  # calls whose batched result differed from the golden, confirmed by a lone request
    disagreed: list[str] = field(default_factory=list)  # the tests in which a lone request differed from the batch
    unused: int = 0  # prefetched results that no call asked for

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, data: dict[str, Any]) -> None:
        """Add another process's statistics (an xdist worker's)."""
        for name, value in data.items():
            setattr(self, name, getattr(self, name) + value)


class Prefetch:
    """The results of one prefetch, answering the calls of the tests (engines.llm.Prefetched)."""

    def __init__(self, stats: PrefetchStats) -> None:
        self.stats = stats
        self.results: dict[CallKey, RowOutput] = {}
        self.expected: dict[CallKey, set[tuple[int, ...]]] = {}  # the tokens each call recorded (variants too)
        self.asked: set[CallKey] = set()

    def answer(self, key: CallKey, lone: Callable[[], RowOutput]) -> tuple[RowOutput, str] | None:
        """The row of call `key` and where it came from; None when it was not prefetched. A batched row that
        is no recorded golden's is replaced by the lone one `lone` generates."""
        batched = self.results.get(key)
        if batched is None:
            return None
        if key not in self.asked:
            self.asked.add(key)
            self.stats.unused -= 1
        if tuple(batched.token_ids) in self.expected.get(key, ()):
            self.stats.batched += 1
            return batched, Source.BATCHED
        row = lone()
        if row.token_ids == batched.token_ids:
            self.stats.confirmed += 1
            return row, Source.CONFIRMED
        return row, Source.DISAGREED


def prefetch_requests(llm: LLM, calls: Iterable[tuple[RecordedCall, int]]
                      ) -> tuple[dict[CallKey, RowRequest], dict[CallKey, set[tuple[int, ...]]], int]:
    """The requests of recorded calls (each with the top-k its test records), once per distinct call, the
    tokens each recorded, and how many calls could not be rebuilt as recorded (prompt tokens or settings)."""
    requests: dict[CallKey, RowRequest] = {}
    expected: dict[CallKey, set[tuple[int, ...]]] = {}
    skipped = 0
    for call, top_k in calls:
        try:
            prompt_ids = llm.encode(check_prompt(call.prompt))
            plan = llm.plan_of_settings(call.settings)
        except (PromptError, GenerationArgumentError, KeyError, TypeError, ValueError):
            skipped += 1
            continue
        if prompt_hash(prompt_ids) != call.prompt_sha256:  # the tokenizer or template changed: the test says so
            skipped += 1
            continue
        key = call_key(prompt_ids, plan.settings, top_k)
        requests.setdefault(key, RowRequest(prompt_ids, plan, top_k))
        expected.setdefault(key, set()).add(call.token_ids)
    return requests, expected, skipped


def prefetch(llm: LLM, calls: Iterable[tuple[RecordedCall, int]], concurrency: int,
             stats: PrefetchStats) -> Prefetch:
    """Generate every distinct recorded call at once on `llm`'s engine (its `generate_each` verb)."""
    started = time.perf_counter()
    result = Prefetch(stats)
    requests, result.expected, skipped = prefetch_requests(llm, calls)
    keys = list(requests)
    rows = llm.engine.generate_each([requests[key] for key in keys], seed=llm.seed, concurrency=concurrency) \
        if keys else []
    for key, row in zip(keys, rows, strict=True):
        if row is not None:
            result.results[key] = row
    stats.batches += 1
    stats.sent += len(keys)
    stats.skipped += skipped
    stats.failed += len(keys) - len(result.results)
    stats.unused += len(result.results)
    stats.seconds += time.perf_counter() - started
    return result


def summary_lines(stats: PrefetchStats) -> list[str]:
    """The summary's lines of the prefetch: what it sent and what it cost, what it answered, and whether a lone
    request disagreed with the batch."""
    if not stats.batches:
        return []
    lone = stats.confirmed + len(stats.disagreed)
    lines = [f"prefetch: {stats.sent} recorded call(s) generated at once ({stats.batches} batch(es), "
             f"{stats.seconds:.2f} s); {stats.batched} answered from the batch, {lone} differed from the golden and "
             f"were generated again alone, {stats.unused} unused"]
    if stats.skipped or stats.failed:
        lines.append(f"prefetch: {stats.skipped} recorded call(s) not sent (prompt tokens or settings no longer as "
                     f"recorded) and {stats.failed} not answered: their tests generated them alone")
    if stats.disagreed:
        tests = ", ".join(sorted(set(stats.disagreed))[:5]) + (", ..." if len(set(stats.disagreed)) > 5 else "")
        lines.append(f"prefetch: in {len(stats.disagreed)} call(s) a lone request gave other tokens than the batch "
                     f"({tests}): {BATCH_INVARIANCE}; each was judged by its lone output, so batching failed no test")
    return lines


__all__ = ["BATCH_INVARIANCE", "Prefetch", "PrefetchStats", "RecordedCall", "Source", "golden_calls", "prefetch",
           "prefetch_requests", "recorded_calls", "summary_lines"]
