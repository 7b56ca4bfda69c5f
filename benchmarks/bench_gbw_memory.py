"""Peak memory at Google Billion Word's vocabulary (793,471 words): a bf16 training step of GCNN-14B, and scoring a
short and a very long input with GCNN-8B.

    python benchmarks/bench_gbw_memory.py                 # GCNN-14B step (8 x 256 tokens), scoring 20,000 / 100,000 tokens

Each measurement runs in a fresh process and reports its peak resident memory (``ru_maxrss``), so one cannot
inherit another's allocations. The target log-probabilities go through the chunked log-sum-exp of
:mod:`gcnn.softmax`: no tokens x cluster matrix is stored in the forward or the backward pass. For comparison the
report states the size of the matrices the textbook computation (log-softmax of the whole cluster, then one entry)
would store for the same batch: logits and their log-softmax, in float32, for the tokens of each tail cluster, and
as much again for their gradients in training.

Token ids are drawn from a Zipf distribution over the vocabulary (as in bench_table4.py), which puts about 10% of the
targets in the 593,471-word last cluster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import common

GBW_VOCAB = 793_471

CHILD = r"""
import json, resource, sys, time
import torch
import gcnn
from gcnn.architectures import GBW_CUTOFFS
sys.path.insert(0, sys.argv[1])
from bench_table4 import zipf_ids
what, arch, batch, length, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(0)
vocab = int(sys.argv[7])
cutoffs = tuple(c for c in GBW_CUTOFFS if c < vocab)
model = gcnn.build_model(arch, vocab_size=vocab, adaptive_cutoffs=cutoffs)
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
built = rss_mb()
ids = zipf_ids((batch, length + 1), vocab, seed=3)
began = time.perf_counter()
if what == "train":
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.99, nesterov=True)   # the paper's optimiser
    model.train()
    losses = []
    for _ in range(2):   # the second step has the optimiser state allocated
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids[:, :-1], ids[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        losses.append(float(loss))
    extra = {"losses": losses}
else:
    from gcnn.evaluate import target_log_probs
    from gcnn.lm import inference
    with inference(model):
        lp = target_log_probs(model, ids[:, :-1].numpy(), ids[:, 1:].numpy(), bf16=True)
    extra = {"mean_log_prob": float(lp.mean())}
print(json.dumps({"peak_mb": rss_mb(), "after_build_mb": built, "seconds": time.perf_counter() - began,
                  "parameters": model.num_parameters(), **extra}))
"""


def measure(what: str, arch: str, batch: int, length: int, threads: int, vocab: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(common.BENCH_DIR), what, arch, str(batch), str(length), str(threads), str(vocab)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} {arch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def textbook_matrix_mb(tokens: int, cutoffs: tuple[int, ...], vocab: int, shares: list[float], training: bool) -> float:
    """MB of float32 logits + log-softmax that the textbook computation stores for ``tokens`` targets (x2 in
    training for their gradients): the head for every token, each tail cluster for the tokens that fall in it."""
    bounds = [0, *cutoffs, vocab]
    head = tokens * (cutoffs[0] + len(cutoffs))
    tails = sum(tokens * share * (hi - lo) for share, lo, hi in zip(shares[1:], bounds[1:], bounds[2:]))
    return (head + tails) * 4 * 2 * (2 if training else 1) / 2**20


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-arch", default="gcnn-14b")
    parser.add_argument("--train-batch", type=int, nargs=2, default=[8, 256], metavar=("SEQUENCES", "TOKENS"))
    parser.add_argument("--score-arch", default="gcnn-8b")
    parser.add_argument("--score-lengths", type=int, nargs=2, default=[20_000, 100_000], metavar=("SHORT", "LONG"))
    common.add_common_arguments(parser, repeats=1)
    args = parser.parse_args(argv)
    result = common.start(args)
    threads = args.threads or 2
    vocab = 200 if args.smoke else GBW_VOCAB
    from bench_table4 import cluster_shares, zipf_ids
    from gcnn.architectures import GBW_CUTOFFS

    cutoffs = tuple(c for c in GBW_CUTOFFS if c < vocab)
    train_arch, score_arch = ("gcnn-tiny", "gcnn-tiny") if args.smoke else (args.train_arch, args.score_arch)
    batch, length = args.train_batch if not args.smoke else (2, 8)
    short, long = args.score_lengths if not args.smoke else (50, 500)
    shares = cluster_shares(zipf_ids((batch, length + 1), vocab, seed=3)[:, 1:], cutoffs) if cutoffs else [1.0]
    rows, runs = [], {}
    for key, (what, arch, b, t) in {
        "train": ("train", train_arch, batch, length),
        "score_short": ("score", score_arch, 1, short),
        "score_long": ("score", score_arch, 1, long),
    }.items():
        got = measure(what, arch, b, t, threads, vocab)
        textbook = textbook_matrix_mb(b * t, cutoffs, vocab, shares, what == "train") if cutoffs else None
        runs[key] = {"arch": arch, "batch": [b, t], **got, "textbook_matrices_mb": textbook}
        rows.append([
            key.replace("_", " "), arch, f"{b} x {t:,}", f"{got['parameters'] / 1e6:.0f}", f"{got['after_build_mb']:,.0f}",
            f"{got['peak_mb']:,.0f}", f"{got['seconds']:.1f}", "" if textbook is None else f"{textbook:,.0f}",
        ])
    result.update(
        title=f"Peak memory at {vocab:,} words (bf16)",
        settings={"vocab_size": vocab, "cutoffs": list(cutoffs), "threads": threads, "target_share_per_cluster": shares},
        runs=runs,
        table_markdown=common.markdown_table(
            ["what", "model", "batch", "params (M)", "RSS after building (MB)", "peak RSS (MB)", "seconds",
             "textbook matrices would add (MB)"], rows),
        notes=[
            "Peak RSS is the whole process (Python, torch, the model's fp32 weights; in training also gradients and "
            "the momentum buffer). Training: two steps of the paper's optimiser (Nesterov momentum 0.99, clipping "
            "0.1) under bf16 autocast. Scoring: one sequence, the long one cut into pieces of 16,384 positions that "
            "continue through the convolutions' cache. The last column is what the log-softmax-then-gather "
            "computation would store on top, for the same batch and cluster shares.",
            f"Scoring peak grows by {runs['score_long']['peak_mb'] - runs['score_short']['peak_mb']:,.0f} MB from "
            f"{short:,} to {long:,} tokens.",
        ],
    )
    common.write_report("gbw-memory", result, None, args.out_dir)
    return result


if __name__ == "__main__":
    main()
