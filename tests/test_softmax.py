"""The output layers: target log-probabilities through the chunked log-sum-exp equal the plain log-softmax (values
and gradients, fp32 and bf16, every cluster and the full softmax), distributions sum to one, and no tokens x cluster
matrix is ever stored."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import gcnn.softmax as sm
from gcnn.softmax import AdaptiveSoftmax, FullSoftmax, chunked_logsumexp

DIM, VOCAB, CUTOFFS = 32, 3000, (100, 600, 1800)


def reference_target_log_probs(layer, hidden, targets):
    """The textbook computation: the whole log-distribution, then one entry per row."""
    return layer.log_probs(hidden).gather(1, targets.unsqueeze(1)).squeeze(1)


def layers():
    torch.manual_seed(0)
    return {"adaptive": AdaptiveSoftmax(DIM, VOCAB, CUTOFFS, div=2.0), "full": FullSoftmax(DIM, VOCAB)}


def targets_in_every_cluster(n: int) -> torch.Tensor:
    bounds = [0, *CUTOFFS, VOCAB]
    per = n // (len(bounds) - 1)
    parts = [torch.randint(lo, hi, (per,)) for lo, hi in zip(bounds, bounds[1:])]
    return torch.cat(parts)[torch.randperm(per * (len(bounds) - 1))]


@pytest.mark.parametrize("kind", ["adaptive", "full"])
@pytest.mark.parametrize("chunk", [None, 700, 1 << 14, "kept"])
def test_chunked_target_log_probs_equal_the_log_softmax_with_gradients(kind, chunk, monkeypatch):
    """Every block size, and ("kept") the training path that keeps small clusters' logits for the backward pass."""
    if chunk != "kept":
        monkeypatch.setattr(sm, "MATERIALIZE_ELEMENTS", 0)  # the recomputing chunked path, also with gradients
    if isinstance(chunk, int):
        monkeypatch.setattr(sm, "CHUNK_ELEMENTS", chunk)
    layer = layers()[kind]
    hidden = torch.randn(120, DIM, requires_grad=True)
    targets = targets_in_every_cluster(120)
    got = layer.target_log_probs(hidden, targets)
    want = reference_target_log_probs(layer, hidden, targets)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    params = [hidden, *layer.parameters()]
    # a weighted sum, so that every row's gradient differs
    weights = torch.rand(len(targets))
    got_grads = torch.autograd.grad((got * weights).sum(), params)
    want_grads = torch.autograd.grad((want * weights).sum(), params)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["adaptive", "full"])
def test_chunked_target_log_probs_under_bf16_autocast_match_the_bf16_log_softmax(kind):
    layer = layers()[kind]
    hidden = torch.randn(300, DIM)
    targets = targets_in_every_cluster(300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer.target_log_probs(hidden, targets)
        want = reference_target_log_probs(layer, hidden, targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["adaptive", "full"])
def test_distributions_sum_to_one_and_agree_with_the_targets(kind):
    layer = layers()[kind]
    hidden = torch.randn(50, DIM)
    probs = layer.log_probs(hidden).double().exp().sum(-1)
    torch.testing.assert_close(probs, torch.ones(50, dtype=torch.float64), atol=1e-5, rtol=0)
    every = torch.arange(VOCAB)
    per_target = layer.target_log_probs(hidden[:1].expand(VOCAB, DIM), every)
    torch.testing.assert_close(per_target, layer.log_probs(hidden[:1])[0], atol=1e-5, rtol=0)


def test_chunked_logsumexp_with_bias_and_its_gradients():
    hidden = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(13, dtype=torch.float64, requires_grad=True)
    got = chunked_logsumexp(hidden, weight, bias, chunk_elements=10)
    want = torch.logsumexp(F.linear(hidden, weight, bias), dim=-1)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    assert torch.autograd.gradcheck(
        lambda h, w, b: sm._ChunkedLogSumExp.apply(h, w, b, 10), (hidden, weight, bias), eps=1e-6, atol=1e-4
    )


def test_no_tokens_by_cluster_matrix_is_ever_stored(monkeypatch):
    """Every logits block the chunked path computes stays within CHUNK_ELEMENTS, in the forward and the backward pass,
    and nothing in the graph saved for backward has the size of a tokens x cluster matrix."""
    monkeypatch.setattr(sm, "CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(sm, "MATERIALIZE_ELEMENTS", 100_000)  # below every cluster's tokens x cluster here
    biggest = []
    real_linear = F.linear

    def spy(x, w, b=None):
        out = real_linear(x, w, b)
        biggest.append(out.numel())
        return out

    monkeypatch.setattr(sm, "F", types.SimpleNamespace(linear=spy))  # the backward pass's products
    real_block = sm._block_logits

    def block_spy(h, w, b, out):
        biggest.append(out.numel())
        return real_block(h, w, b, out)

    monkeypatch.setattr(sm, "_block_logits", block_spy)  # the forward pass's
    layer = AdaptiveSoftmax(DIM, VOCAB, CUTOFFS, div=2.0)
    hidden = torch.randn(2000, DIM, requires_grad=True)
    targets = targets_in_every_cluster(2000)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = -layer.target_log_probs(hidden, targets).sum()
    loss.backward()
    assert biggest and max(biggest) <= 4096
    smallest_matrix = 500 * (CUTOFFS[1] - CUTOFFS[0])  # the smallest tail's tokens x cluster
    assert max(saved) < smallest_matrix, max(saved)


def test_chunked_logsumexp_with_masked_entries_in_the_bias():
    """A -inf bias (a masked word) at the first column of a block, or whole blocks masked, the first one included
    (the block that sets each row's offset): the same log-sum-exp as torch.logsumexp over the whole row, never NaN;
    a row masked everywhere is -inf."""
    torch.manual_seed(31)
    hidden, weight = torch.randn(5, 8), torch.randn(3000, 8)
    columns = sm.BLOCK_COLUMNS
    chunk = 5 * columns  # blocks of 5 rows x BLOCK_COLUMNS entries
    assert sm._blocks(5, 3000, chunk) == (5, columns)
    bias = torch.randn(3000)
    bias[0] = bias[columns] = float("-inf")
    bias[2 * columns :] = float("-inf")
    got = chunked_logsumexp(hidden, weight, bias, chunk_elements=chunk)
    expected = torch.logsumexp(F.linear(hidden, weight, bias), dim=-1)
    assert torch.isfinite(got).all() and torch.allclose(got, expected, atol=1e-5)
    first_masked = torch.randn(3000)
    first_masked[:columns] = float("-inf")
    got = chunked_logsumexp(hidden, weight, first_masked, chunk_elements=chunk)
    expected = torch.logsumexp(F.linear(hidden, weight, first_masked), dim=-1)
    assert torch.isfinite(got).all() and torch.allclose(got, expected, atol=1e-5)
    everywhere = torch.full((3000,), float("-inf"))
    got = chunked_logsumexp(hidden, weight, everywhere, chunk_elements=chunk)
    assert torch.equal(got, torch.full((5,), float("-inf")))
    # a masked first block and every later logit near -100: exp of them is subnormal in float32 without the first
    # block's anchor (the sum is no longer at least 1), so these rows take the exact path
    deep = torch.full((3000,), -100.0)
    deep[:columns] = float("-inf")
    got = chunked_logsumexp(torch.zeros(5, 8), weight, deep, chunk_elements=chunk)
    expected = torch.logsumexp(F.linear(torch.zeros(5, 8), weight, deep).double(), dim=-1).float()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_chunked_logsumexp_of_no_rows_or_an_empty_cluster():
    assert chunked_logsumexp(torch.randn(0, 4), torch.randn(7, 4)).shape == (0,)
    assert torch.equal(chunked_logsumexp(torch.randn(3, 4), torch.randn(0, 4)), torch.full((3,), float("-inf")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logsumexp_when_a_later_block_is_far_above_the_first(dtype):
    """Each row's offset is its first block's largest logit; logits 100 to 3,000 above it in a later block (the sum
    overflows float32) take the exact per-block path and still equal torch.logsumexp; rows that stay in range are
    unchanged."""
    torch.manual_seed(5)
    hidden, weight = torch.randn(6, 8), torch.randn(3000, 8)
    bias = torch.zeros(3000)
    bias[2500] = 3000.0  # in the third block, for every row
    bias[1500:1600] = 100.0
    chunk = 6 * sm.BLOCK_COLUMNS
    h, w, b = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
    got = chunked_logsumexp(h, w, b, chunk_elements=chunk)
    expected = torch.logsumexp(F.linear(h, w, b).float(), dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    tame = chunked_logsumexp(h, w, None, chunk_elements=chunk)
    torch.testing.assert_close(tame, torch.logsumexp(F.linear(h, w).float(), dim=-1), atol=1e-4, rtol=0)


def test_chunked_logsumexp_propagates_nan_and_infinite_logits():
    hidden, weight = torch.randn(3, 4), torch.randn(2100, 4)
    bias = torch.zeros(2100)
    bias[1500] = float("inf")
    got = chunked_logsumexp(hidden, weight, bias, chunk_elements=3 * sm.BLOCK_COLUMNS)
    assert torch.equal(got, torch.full((3,), float("inf")))
    bias[1500] = float("nan")
    assert torch.isnan(chunked_logsumexp(hidden, weight, bias, chunk_elements=3 * sm.BLOCK_COLUMNS)).all()


def test_narrow_products_take_the_smaller_cache_sized_blocks(monkeypatch):
    """The default block: NARROW_CHUNK_ELEMENTS logits for a hidden size up to NARROW_DIM, CHUNK_ELEMENTS above."""
    seen = []
    real_block = sm._block_logits

    def block_spy(h, w, b, out):
        seen.append(out.numel())
        return real_block(h, w, b, out)

    monkeypatch.setattr(sm, "_block_logits", block_spy)
    monkeypatch.setattr(sm, "CHUNK_ELEMENTS", 8192)
    monkeypatch.setattr(sm, "NARROW_CHUNK_ELEMENTS", 2048)
    for dim, limit in ((sm.NARROW_DIM, 2048), (sm.NARROW_DIM + 1, 8192)):
        seen.clear()
        hidden, weight = torch.randn(64, dim) / dim**0.5, torch.randn(3000, dim)
        got = chunked_logsumexp(hidden, weight)
        torch.testing.assert_close(got, torch.logsumexp(hidden @ weight.T, dim=-1), atol=1e-5, rtol=0)
        assert max(seen) == limit, (dim, seen)
