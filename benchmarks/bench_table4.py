"""Benchmark 2: the paper's Table 4 on this machine -- scoring speed of GCNN-9 and GCNN-8B against an LSTM-2048.

    python benchmarks/bench_table4.py                    # fp32, 3 repeats

Protocol (paper section 5.3): throughput = 750 sequences of 20 tokens scored as one batch; responsiveness = one
sequence of 15,000 tokens scored in order (one call: the GCNN convolves all positions at once, the LSTM steps
through them one after the other). Scoring = the log-probability of every target through the adaptive softmax.

Models: gcnn-9 and gcnn-8b exactly as the paper's Table 1, and lstm-2048 (one layer of 2048 units projected to 512,
Jozefowicz et al.'s LSTM-2048-512 at 43.7 test perplexity, the published LSTM closest to the paper's 43.9 row),
all with Google Billion Word's vocabulary of 793,471 words and the cutoffs 4000, 40000, 200000. Google Billion Word
is not among the project's corpora, so token ids are drawn from a Zipf distribution (p(rank r) ~ 1/r) over that
vocabulary; this puts more targets in the tail clusters than real text does, alike for every model.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor, nn

import common
import gcnn
from gcnn.architectures import GBW_CUTOFFS

GBW_VOCAB = 793_471
MODELS = ("lstm-2048", "gcnn-9", "gcnn-8b")
# the paper's Table 4 (tokens/s on its own hardware), for comparison only
PAPER = {
    "lstm-2048": {"cpu": 169, "gpu": 45_622, "gpu_responsiveness": 2_282},
    "gcnn-9": {"cpu": 121, "gpu": 29_116, "gpu_responsiveness": 29_116},
    "gcnn-8b": {"cpu": 179, "gpu": 45_878, "gpu_responsiveness": 45_878},
}


def zipf_ids(shape: tuple[int, ...], vocab_size: int, seed: int = 0) -> Tensor:
    """Token ids with p(id) proportional to 1 / (id + 1): rank-frequency of natural text (Zipf's law)."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(weights, int(torch.tensor(shape).prod()), replacement=True, generator=generator).view(
        shape
    )


def score(model: nn.Module, ids: Tensor) -> None:
    """Log-probabilities of ids[:, 1:] given the tokens before them."""
    model(ids[:, :-1], ids[:, 1:])


def cluster_shares(ids: Tensor, cutoffs: tuple[int, ...]) -> list[float]:
    bounds = [0, *cutoffs, GBW_VOCAB]
    return [round(((ids >= lo) & (ids < hi)).double().mean().item(), 4) for lo, hi in zip(bounds, bounds[1:])]


def table(result: dict[str, Any]) -> str:
    rows = []
    for name, m in result["models"].items():
        paper = PAPER.get(name, {})
        rows.append(
            [
                name,
                f"{m['parameters'] / 1e6:.0f}",
                f"{m['throughput_tokens_per_s']:,.0f}",
                f"{m['responsiveness_tokens_per_s']:,.0f}",
                *(f"{paper[k]:,}" if k in paper else "" for k in ("cpu", "gpu", "gpu_responsiveness")),
            ]
        )
    header = [
        "model",
        "params (M)",
        "throughput tokens/s",
        "responsiveness tokens/s",
        "paper: CPU tokens/s",
        "paper: GPU tokens/s",
        "paper: GPU responsiveness",
    ]
    return common.markdown_table(header, rows)


def plot(result: dict[str, Any]):
    """Throughput and responsiveness per model, as bars."""
    names = list(result["models"])
    return common.bar_chart(
        f"Paper Table 4 protocol on this machine, {result['settings']['precision']}",
        "tokens/s",
        names,
        {
            "throughput (750 x 20)": [result["models"][m]["throughput_tokens_per_s"] for m in names],
            "responsiveness (1 x 15,000)": [result["models"][m]["responsiveness_tokens_per_s"] for m in names],
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=common.PRECISIONS, default="fp32")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    common.add_common_arguments(parser, repeats=3)
    args = parser.parse_args(argv)
    common.check_positive(parser, args, "repeats")
    result = common.start(args)

    if args.smoke:
        vocab, batch, length, stream, names = (
            200,
            (6, 4),
            4,
            50,
            {"lstm-2048": "lstm-tiny", "gcnn-9": "gcnn-tiny", "gcnn-8b": "gcnn-tiny"},
        )
    else:
        vocab, batch, length, stream, names = GBW_VOCAB, (750, 20), 20, 15_000, {m: m for m in MODELS}
    cutoffs = tuple(c for c in GBW_CUTOFFS if c < vocab)
    built = {m: gcnn.build_model(names[m], vocab_size=vocab, adaptive_cutoffs=cutoffs).eval() for m in args.models}
    batch_ids = zipf_ids((batch[0], length + 1), vocab, seed=1)
    stream_ids = zipf_ids((1, stream + 1), vocab, seed=2)
    runs = [(m, protocol) for m in built for protocol in ("throughput", "responsiveness")]
    seconds: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    with torch.inference_mode(), common.autocast(args.precision):
        for model in built.values():  # untimed: first calls set up kernels and caches
            score(model, batch_ids[:8])
            score(model, stream_ids[:, :200])
        for _ in range(args.repeats):
            for name, protocol in runs:
                ids = batch_ids if protocol == "throughput" else stream_ids
                seconds[(name, protocol)].append(common.timed(lambda: score(built[name], ids)))

    def rate(name: str, protocol: str) -> float:
        tokens = batch[0] * length if protocol == "throughput" else stream
        return round(tokens / common.median(seconds[(name, protocol)]), 1)

    result.update(
        title=f"The paper's Table 4 on this machine (benchmark 2), {args.precision}",
        settings={
            "vocab_size": vocab,
            "cutoffs": list(cutoffs),
            "throughput_batch": list(batch) + [length],
            "responsiveness_tokens": stream,
            "precision": args.precision,
            "repeats": args.repeats,
            "ids": "Zipf (p ~ 1/rank) over the vocabulary",
            "target_share_per_cluster": cluster_shares(batch_ids[:, 1:], cutoffs),
        },
        models={
            name: {
                "description": model.config.describe(),
                "parameters": model.num_parameters(),
                "throughput_tokens_per_s": rate(name, "throughput"),
                "responsiveness_tokens_per_s": rate(name, "responsiveness"),
                "samples_seconds": {
                    p: [round(s, 4) for s in seconds[(name, p)]] for p in ("throughput", "responsiveness")
                },
            }
            for name, model in built.items()
        },
    )
    result["table_markdown"] = table(result)
    result["notes"] = [
        f"tokens/s: scored tokens over the median seconds of {args.repeats} repeats, all models taking turns, after a "
        "short untimed call of each. Share of "
        f"targets per softmax cluster (head, tails): {result['settings']['target_share_per_cluster']}. The paper's columns "
        "are its own figures on its own hardware (CPU thread count not stated), for comparison only.",
    ]
    common.write_report("table4", result, plot(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
