"""Token statistics recorded step by step during `generate`, instead of keeping every step's scores.

`generate(output_scores=True)` keeps one (batch x vocabulary) float tensor per new token: for 512 new tokens
on a 151,936-token vocabulary that is ~311 MB per row, on the model's device. What the plugin records of them
is small: per step the margin (top-1 minus top-2 log-probability), the chosen token's log-probability and,
for a tolerant comparison, the top-k candidates. `StepRecorder` is a logits processor that computes exactly
that from each step's processed scores as they pass, without a log-softmax over the vocabulary: log_softmax
shifts a row by one constant (its logsumexp), so the top candidates and the margin come from the scores
themselves (engines/row_top.py), and a log-probability is a score minus its row's logsumexp. The chosen token
of step t is only known at step t + 1 (the last input id; the last one from the output), so the recorder holds
on to step t's scores until then: the tensor `generate` itself keeps alive as its `next_token_scores` until the
next step's processors return, so holding it costs no memory.

Where it sits: transformers builds its processors (repetition penalty, min length, ...), then appends the
`logits_processor=` a caller passes, and only then the sampling warpers (temperature, top-k, top-p, ...) and
`LogitNormalization`. `output_scores` holds what comes out after all of them, so a processor passed as
`logits_processor=` would see other scores when sampling (and with renormalize_logits). The recorder is
therefore appended to the end of the list `_get_logits_processor` returns, for the one call: what it sees is
exactly what `output_scores` held. Where that cannot be done (no such method, or a decoding mode other than
greedy search or sampling, such as prompt-lookup assisted generation), the scores are kept as before and
replayed through the same recorder, so the figures never depend on which path was taken.

torch is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.engines.row_top import row_top

# The decoding modes in which the processors run once per new token on the running sequence.
_STEP_MODES = ("greedy_search", "sample")
_CALL_SIGNATURE = inspect.signature(lambda input_ids, scores: None)


class StepRecordError(RuntimeError):
    """The recorded steps do not match the generated tokens (the recorder was bypassed or called oddly)."""


@dataclass(frozen=True)
class TokenStats:
    """One sequence's statistics, a value per new token."""

    margins: list[float]  # top-1 minus top-2 log-probability of the processed scores
    logprobs: list[float]  # the chosen token's log-probability
    top_k_ids: list[list[int]] | None = None  # with top_k > 0: the top-k token IDs of each step
    top_k_logprobs: list[list[float]] | None = None  # and their log-probabilities


class StepRecorder:
    """A logits processor that records per-step statistics of the scores it sees, for every batch row, and
    returns the scores unchanged. Call `finish` with the new token IDs after generate."""

    def __init__(self, top_k: int = 0) -> None:
        self.top_k = top_k
        self._previous: Any = None  # the last step's scores, (batch, vocabulary): generate's own tensor
        self._best: list[Any] = []  # per step, the top max(2, top_k) scores, (batch, k)
        self._best_ids: list[Any] = []  # and their IDs, (batch, k), kept only with top_k
        # per step, each row's -log(sum(exp(score - max))), (batch, 1): log-prob = (score - max) + that
        self._log_sums: list[Any] = []
        self._chosen: list[Any] = []  # per step but the last seen, the chosen token's score, (batch, 1)
        self._chosen_ids: list[Any] = []  # the IDs those were gathered at, checked against the output
        # transformers' LogitsProcessorList runs inspect.signature(processor.__call__) before every call: 20 to
        # 80 us a step for a bound method, as much as the recording itself. An instance attribute carrying its
        # signature answers at once (calls still go to the class's __call__; the proxy avoids a cycle).
        self.__call__ = functools.partial(StepRecorder.__call__, weakref.proxy(self))
        self.__call__.__signature__ = _CALL_SIGNATURE

    @property
    def steps(self) -> int:
        return len(self._best)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        # As few operations per step as will do (each costs some microseconds on a small model); the shift to
        # log-probs, margins and the slicing of top-k happen once, over all steps, in `finish`.
        import torch

        if self._previous is not None:  # the token chosen at the previous step is the last input now
            self._gather(input_ids[:, -1:])
        values, ids = row_top(scores, min(max(2, self.top_k), scores.shape[-1]), indices=bool(self.top_k))
        self._best.append(values)
        if self.top_k:
            self._best_ids.append(ids)
        # log_softmax computes (x - max) - log(sum(exp(x - max))): its maximum is minus that log, exactly. One
        # fused pass over the row, cheaper on the CPU than logsumexp (which makes x - max and its exp, two more
        # rows), and freed before the step ends.
        self._log_sums.append(torch.log_softmax(scores, dim=-1, dtype=torch.float32).amax(dim=-1, keepdim=True))
        self._previous = scores
        return scores

    def _gather(self, chosen: Any) -> None:
        self._chosen.append(self._previous.gather(1, chosen))
        self._chosen_ids.append(chosen)
        self._previous = None

    def finish(self, new_ids: Any) -> list[TokenStats]:
        """The statistics of each row, for the `new_ids` (batch, new tokens) generate returned. Steps recorded
        beyond them (a stop check deferred by a step, then undone) are dropped."""
        import torch

        rows, count = new_ids.shape
        if self.steps < count:
            raise StepRecordError(f"{count} new tokens but the recorder saw {self.steps} steps; "
                                  "the model's generate did not run the plugin's logits processor each step")
        if len(self._chosen) < count:  # the last step's chosen token is only in the output
            self._gather(new_ids[:, len(self._chosen):len(self._chosen) + 1])
        self._previous = None
        if count == 0:
            empty = [] if self.top_k else None
            return [TokenStats([], [], empty, empty) for _ in range(rows)]
        seen = torch.cat(self._chosen_ids[:count], dim=1)
        if not torch.equal(seen.to(new_ids.device), new_ids):
            raise StepRecordError("the tokens the recorder saw chosen differ from the generated tokens")
        best = torch.stack(self._best[:count], dim=1).float()  # (batch, steps, k), the best scores
        peak, log_sums = best[..., :1], torch.cat(self._log_sums[:count], dim=1).unsqueeze(-1)
        # Log-probs as log_softmax computes them, (score - max) - log(sum(exp(score - max))): the same floats.
        best_logprobs = (best - peak) + log_sums
        margins = (best_logprobs[..., 0] - best_logprobs[..., 1] if best.shape[-1] >= 2
                   else torch.full_like(best[..., 0], float("inf"))).tolist()
        chosen = ((torch.cat(self._chosen[:count], dim=1).float() - peak[..., 0]) + log_sums[..., 0]).tolist()
        if not self.top_k:
            return [TokenStats(margins[row], chosen[row]) for row in range(rows)]
        top_ids = torch.stack(self._best_ids[:count], dim=1)[..., :self.top_k].tolist()
        top_logprobs = best_logprobs[..., :self.top_k].tolist()
        return [TokenStats(margins[row], chosen[row], top_ids[row], top_logprobs[row]) for row in range(rows)]

    def replay(self, scores: tuple[Any, ...], sequences: Any, prompt_length: int) -> list[TokenStats]:
        """The same statistics from scores kept by `generate(output_scores=True)`: each step fed in turn."""
        for step, step_scores in enumerate(scores):
            self(sequences[:, :prompt_length + step], step_scores)
        return self.finish(sequences[:, prompt_length:])


@contextlib.contextmanager
def appended_last(model: Any, processor: Any) -> Iterator[None]:
    """While inside, the logits processors `model.generate` builds end with `processor`: after the model's own
    processors, the caller's and the sampling warpers, as the last to touch the scores."""
    had_own = "_get_logits_processor" in vars(model)
    original = model._get_logits_processor
    appended = False

    def with_processor(*args: Any, **kwargs: Any) -> Any:
        nonlocal appended
        processors = original(*args, **kwargs)
        if not appended:  # one list per generate call; another (an assistant's, say) is left alone
            processors.append(processor)
            appended = True
        return processors

    model._get_logits_processor = with_processor
    try:
        yield
    finally:
        if had_own:
            model._get_logits_processor = original
        else:
            del model._get_logits_processor


def can_record_steps(model: Any, generation_config: Any) -> bool:
    """Whether the recorder can run inside `model.generate` with this config (else scores are kept)."""
    if not callable(getattr(model, "_get_logits_processor", None)):
        return False
    try:
        mode = generation_config.get_generation_mode()
    except Exception:  # noqa: BLE001 - an unknown config: keep the scores, the safe way
        return False
    return str(getattr(mode, "value", mode)) in _STEP_MODES


def generate_with_stats(model: Any, input_ids: Any, attention_mask: Any, generation_config: Any,
                        top_k: int = 0) -> tuple[Any, list[TokenStats]]:
    """`model.generate` with `generation_config` (which must not ask for scores), recording each row's token
    statistics as it goes: returns (the new token IDs, (batch, new tokens)), one TokenStats per row)."""
    recorder = StepRecorder(top_k)
    prompt_length = input_ids.shape[1]
    if can_record_steps(model, generation_config):
        with appended_last(model, recorder):
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    generation_config=generation_config)
        sequences = output.sequences if hasattr(output, "sequences") else output
        new_ids = sequences[:, prompt_length:]
        return new_ids, recorder.finish(new_ids)
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                            generation_config=generation_config, output_scores=True,
                            return_dict_in_generate=True)
    return output.sequences[:, prompt_length:], recorder.replay(output.scores, output.sequences, prompt_length)


__all__ = ["StepRecordError", "StepRecorder", "TokenStats", "appended_last", "can_record_steps",
           "generate_with_stats"]
