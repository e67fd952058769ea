"""The block-wise top-k gives torch.topk's values exactly, and positions that hold them."""

from __future__ import annotations

import pytest
import torch

from pytest_llmdet.engines import row_top as module
from pytest_llmdet.engines.row_top import row_top


def _rows(rows: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


def assert_like_topk(scores: torch.Tensor, k: int) -> None:
    values, indices = row_top(scores, k)
    reference = torch.topk(scores, k, dim=-1)
    assert torch.equal(values, reference.values)
    assert torch.equal(scores.gather(1, indices), values)  # each position holds its value
    for row in indices.tolist():
        assert len(set(row)) == k  # no token twice
    unique = (scores.unsqueeze(1) == values.unsqueeze(-1)).sum(-1) == 1  # (rows, k)
    assert torch.equal(indices[unique], reference.indices[unique])  # a value held once: the same position
    assert row_top(scores, k, indices=False)[1] is None


WIDE = module.BLOCKS_PER_VALUE * 64 * module.BLOCK  # enough blocks for 64 values: 65,536 tokens


@pytest.mark.parametrize("width", [WIDE, WIDE + 77])
@pytest.mark.parametrize("k", [1, 2, 5, 64])
def test_blocks_give_topk_values_with_and_without_a_tail(width, k):
    scores = _rows(3, width, seed=k)
    assert width // module.BLOCK >= module.BLOCKS_PER_VALUE * k  # the block path, not the fallback
    assert_like_topk(scores, k)


def test_the_best_values_in_one_block_or_in_the_tail():
    scores = _rows(2, 40 * module.BLOCK + 5, seed=1)
    scores[0, 7 * module.BLOCK:7 * module.BLOCK + 5] += 100  # all five in one block
    scores[1, -3:] += 100  # three in the tail, the rest elsewhere
    assert_like_topk(scores, 5)
    assert row_top(scores, 5)[1][1, :3].tolist() == sorted(range(scores.shape[1] - 3, scores.shape[1]),
                                                            key=lambda i: -float(scores[1, i]))


def test_minus_infinity_and_ties_from_processors():
    scores = _rows(2, 64 * module.BLOCK, seed=2)
    scores[0, :] = float("-inf")  # a top-k warper kept three tokens
    scores[0, [5, 900, 4000]] = torch.tensor([1.0, 3.0, 2.0])
    scores[1] = torch.round(scores[1] * 2) / 2  # coarse values: many ties, as a bf16 model gives
    values, indices = row_top(scores, 6)
    assert torch.equal(values, torch.topk(scores, 6).values)
    assert indices[0, :3].tolist() == [900, 4000, 5] and values[0, 3:].isneginf().all()
    assert torch.equal(scores.gather(1, indices), values) and len(set(indices[0].tolist())) == 6


def test_short_rows_and_many_values_use_topk_itself():
    scores = _rows(2, 5 * module.BLOCK, seed=3)  # too few blocks for k=2
    values, indices = row_top(scores, 2)
    reference = torch.topk(scores, 2)
    assert torch.equal(values, reference.values) and torch.equal(indices, reference.indices)


def test_a_row_that_is_not_contiguous():
    scores = _rows(64 * module.BLOCK, 2, seed=4).t()  # (2, width) with a column stride of 2
    assert not scores.is_contiguous()
    assert_like_topk(scores, 3)
