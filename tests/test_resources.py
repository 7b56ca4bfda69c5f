"""Memory that does not grow with the input: sequences longer than a forward pass's budget are scored in pieces that
continue through the model's cache (the same numbers as one pass), and the peak memory of scoring and evaluation is
the same for a short and a very long input, with a large full softmax."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import gcnn
from gcnn.data.vocab import Vocabulary
from gcnn.evaluate import perplexity, score_texts, target_log_probs
from gcnn.lm import IGNORE_INDEX, inference


def tiny(name: str, vocab_size: int = 300, **overrides):
    torch.manual_seed(0)
    return gcnn.build_model(name, vocab_size=vocab_size, **overrides).eval()


@pytest.mark.parametrize("name", ["gcnn-tiny", "lstm-tiny", "transformer-tiny"])
def test_pieces_through_the_cache_equal_one_pass(name):
    model = tiny(name)
    length = min(120, getattr(model.config, "max_len", 200))
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 300, size=(2, length))
    targets = rng.integers(0, 300, size=(2, length))
    targets[1, length - 17 :] = IGNORE_INDEX  # padding, as score batches have
    with inference(model):
        whole = target_log_probs(model, inputs, targets, batch_tokens=10_000)
        pieces = target_log_probs(model, inputs, targets, batch_tokens=2 * 23)  # pieces of 23 positions
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=0)


def test_a_long_line_scores_the_same_in_pieces():
    words = [f"w{i}" for i in range(200)]
    vocab = Vocabulary(["<unk>", "<eos>", *words])
    model = tiny("gcnn-tiny", vocab_size=len(vocab))
    rng = np.random.default_rng(1)
    line = " ".join(rng.choice(words, size=3000))
    short = [" ".join(rng.choice(words, size=7)) for _ in range(5)]
    one = list(score_texts(model, vocab, [line, *short], batch_tokens=100_000))
    cut = list(score_texts(model, vocab, [line, *short], batch_tokens=256))
    for a, b in zip(one, cut):
        assert a.tokens == b.tokens
        assert abs(a.logprob - b.logprob) < 1e-3 * max(1.0, abs(a.logprob) / 1000)


PEAK = """
import json, resource, sys
import numpy as np, torch
import gcnn
from gcnn.data.vocab import Vocabulary
from gcnn.evaluate import perplexity, score_texts
torch.set_num_threads(1)
what, vocab_size = sys.argv[1], int(sys.argv[2])
words = [f"w{i}" for i in range(vocab_size - 2)]
vocab = Vocabulary(["<unk>", "<eos>", *words])
torch.manual_seed(0)
model = gcnn.build_model("gcnn-tiny", vocab_size=len(vocab)).eval()   # a full softmax over the whole vocabulary
rng = np.random.default_rng(0)
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def run(n):
    if what == "score":
        list(score_texts(model, vocab, [" ".join(rng.choice(words, size=n))]))
    else:   # one sentence of n tokens in sentence mode, and a stream of n tokens
        ids = rng.integers(2, len(vocab), size=n); ids[-1] = vocab.eos_id
        perplexity(model, ids, mode="sentence", eos_id=vocab.eos_id)
        perplexity(model, ids, mode="stream", eos_id=vocab.eos_id)
run(5_000)
small = peak_mb()
run(60_000)
print(json.dumps({"small": small, "large": peak_mb()}))
"""


@pytest.mark.parametrize("what", ["score", "eval"])
def test_peak_memory_does_not_grow_with_the_input(what):
    """A 5,000-token and a 60,000-token input through a 5,000-word full softmax: without pieces and the chunked
    log-sum-exp the long one would need 60,000 x 5,000 x 4 bytes = 1.2 GB of logits (and as much again for their
    log-softmax); the stated bound is 100 MB over the short input's peak."""
    out = subprocess.run([sys.executable, "-c", PEAK, what, "5000"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peaks = json.loads(out.stdout)
    print(peaks)
    assert peaks["large"] - peaks["small"] < 100, peaks


def test_gbw_memory_benchmark_runs(tmp_path, monkeypatch):
    """benchmarks/bench_gbw_memory.py --smoke: each measurement in its own process reports a peak at least its
    building memory, and the report is written."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_gbw_memory

    result = bench_gbw_memory.main(["--smoke", "--threads", "1", "--out-dir", str(tmp_path)])
    assert set(result["runs"]) == {"train", "score_short", "score_long"}
    for run in result["runs"].values():
        assert run["peak_mb"] >= run["after_build_mb"] > 0
    assert len(result["runs"]["train"]["losses"]) == 2
    assert list(tmp_path.glob("*-gbw-memory.md"))
