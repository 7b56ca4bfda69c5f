"""Benchmark 1 and 5: training throughput of the GCNN-8 shape (gcnn's model and the plain PyTorch reference), an
LSTM and a Transformer of about the same parameter count, in fp32 and bf16 autocast, with the achieved FLOP/s as a
fraction of this machine's matmul peak measured in the same run.

    python benchmarks/bench_train.py                     # default: batch 16 x 256 tokens, 1 warm-up + 3 timed steps
    python benchmarks/bench_train.py --repeats 10        # more repeats for steadier medians

A step is forward + backward + gradient-norm clipping (0.1) + an SGD step with Nesterov momentum 0.99 (the paper's
recipe). Every (model, precision) and the matmul peak take turns, one step each per round, so a change in the load
of a shared machine hits them all alike; tokens/s are medians over the timed rounds, and each model's speed relative
to the reference is the median over rounds of the ratio within a round.

FLOPs per token = 6 x (matmul weights the token passes through): every weight matrix except embeddings and weight-norm
gains, plus each adaptive-softmax tail weighted by the share of targets that fall in its cluster (a tail is only
computed for those), plus for the Transformer the causal attention, 6 x layers x width x T (QK^T and AV over T/2
keys on average, forward and backward).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor, nn

import common
import models
from gcnn.softmax import AdaptiveSoftmax

OPTIMIZER = "SGD, Nesterov momentum 0.99, lr 1e-3, gradient-norm clipping 0.1"


def softmax_tails(softmax: nn.Module) -> list[tuple[int, int, nn.Module]]:
    """(first id, end id, tail module) of each adaptive-softmax tail cluster; [] for a full softmax."""
    if isinstance(softmax, nn.AdaptiveLogSoftmaxWithLoss):
        bounds, tails = softmax.cutoffs, softmax.tail
    elif isinstance(softmax, AdaptiveSoftmax):
        bounds, tails = softmax.bounds, softmax.tails
    else:
        return []
    return [(bounds[i], bounds[i + 1], tail) for i, tail in enumerate(tails)]


def matmul_parameters(model: nn.Module) -> int:
    """Weights every token is multiplied by: all matrices but the embeddings, weight-norm gains and softmax tails."""
    skip = {id(p) for _, _, tail in softmax_tails(model.softmax) for p in tail.parameters()}
    skip |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() >= 2 and id(p) not in skip and not name.endswith(("weight_g", "original0"))
    )


def flops_per_token(model: nn.Module, targets: Tensor, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token (see the module docstring), with the parts it is made of."""
    dense = matmul_parameters(model)
    tails = sum(
        ((targets >= lo) & (targets < hi)).float().mean().item() * sum(p.numel() for p in tail.parameters())
        for lo, hi, tail in softmax_tails(model.softmax)
    )
    attention = 0.0
    if getattr(getattr(model, "config", None), "model_type", None) == "transformer":
        attention = 6.0 * model.config.num_layers * model.config.embed_dim * seq_len
    return {
        "matmul_parameters": dense,
        "tail_parameters_per_token": tails,
        "flops_per_token": 6.0 * (dense + tails) + attention,
    }


def largest_weight(model: nn.Module) -> tuple[int, int]:
    """(inputs, outputs) of the model's largest weight matrix, as a matmul (a convolution's kernel width folded
    into its inputs): the shape the matmul peak is measured at."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    weight = max((p for p in model.parameters() if p.dim() >= 2 and id(p) not in embeddings), key=lambda p: p.numel())
    return weight[0].numel(), weight.shape[0]


class Trainer:
    """One model in one precision: its own optimizer, and the tokens/s of each timed step."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        self.model, self.precision = model, precision
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        self.samples: list[float] = []

    def step(self, tokens: Tensor, targets: Tensor) -> float:
        """One training step; returns its seconds."""

        def run() -> None:
            with common.autocast(self.precision):
                loss = models.loss_of(self.model, tokens, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
            self.optimizer.step()

        return common.timed(run)


def run_rounds(
    trainers: dict[tuple[str, str], Trainer],
    peaks: dict[str, common.MatmulPeak],
    batches: list[tuple[Tensor, Tensor]],
    warmup: int,
) -> dict[tuple[str, str], list[float]]:
    """Round-robin: each round every trainer takes one step and every peak one matmul. Returns the per-round
    seconds of the timed rounds, per trainer."""
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    for r, (tokens, targets) in enumerate(batches):
        for key, trainer in trainers.items():
            elapsed = trainer.step(tokens, targets)
            if r >= warmup:
                seconds[key].append(elapsed)
        for peak in peaks.values():
            if r < warmup:
                common.timed(peak.run_once)
                peak.samples.clear()
            else:
                peak.run_once()
    return seconds


def summarise(
    seconds: dict[tuple[str, str], list[float]],
    tokens_per_step: int,
    flops: dict[str, dict[str, float]],
    peaks: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (name, precision), times in seconds.items():
        rates = [tokens_per_step / t for t in times]
        ref = seconds.get(("reference", precision))
        tokens_per_s = common.median(rates)
        achieved = tokens_per_s * flops[name]["flops_per_token"]
        out.setdefault(name, {})[precision] = {
            "tokens_per_s": round(tokens_per_s, 1),
            "step_seconds_median": round(common.median(times), 4),
            "achieved_flops_per_s": achieved,
            "fraction_of_peak": achieved / peaks[precision]["flops_per_s"],
            "ratio_to_reference": common.median([r / t for t, r in zip(times, ref)]) if ref else None,
            "samples_tokens_per_s": [round(r, 1) for r in rates],
        }
    return out


def throughput_rows(models: dict[str, Any], precisions: list[str]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a training-throughput table (also used by bench_gpu.py)."""
    header = ["model", "params (M)", "FLOPs/token (M)"]
    for p in precisions:
        header += [f"{p} tokens/s", f"{p} % of peak", f"{p} vs reference"]
    rows = []
    for name, m in models.items():
        row = [name, f"{m['parameters'] / 1e6:.1f}", f"{m['flops_per_token'] / 1e6:.0f}"]
        for p in precisions:
            r = m[p]
            ratio = f"{r['ratio_to_reference']:.2f}x" if r["ratio_to_reference"] is not None else "n/a"
            row += [f"{r['tokens_per_s']:,.0f}", f"{100 * r['fraction_of_peak']:.1f}%", ratio]
        rows.append(row)
    return header, rows


def table(result: dict[str, Any], precisions: list[str]) -> str:
    header, rows = throughput_rows(result["models"], precisions)
    peaks = ", ".join(f"{p} {result['matmul_peak'][p]['flops_per_s'] / 1e9:,.0f} GFLOP/s" for p in precisions)
    described = common.markdown_table(
        ["model", "structure", "matmul weights per token (M)"],
        [[n, m["description"], f"{m['matmul_parameters'] / 1e6:.1f}"] for n, m in result["models"].items()],
    )
    shape = result["matmul_peak"][precisions[0]]["shape_mkn"]
    return "\n\n".join(
        [common.markdown_table(header, rows), described, f"Matmul peak in the same run (torch.mm {shape}): {peaks}."]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--precision", nargs="+", choices=common.PRECISIONS, default=list(common.PRECISIONS))
    parser.add_argument("--models", nargs="+", choices=models.MODEL_NAMES, default=list(models.MODEL_NAMES))
    common.add_common_arguments(parser, repeats=3)
    args = parser.parse_args(argv)
    common.check_positive(parser, args, "batch_size", "seq_len", "repeats")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    if args.smoke:
        args.batch_size, args.seq_len = min(args.batch_size, 2), min(args.seq_len, 16)
    result = common.start(args)

    vocab = 200 if args.smoke else common.WIKITEXT2_VOCAB
    built = models.build_models(vocab, smoke=args.smoke, names=args.models, max_len=args.seq_len)
    rounds = args.warmup + args.repeats
    stream, source = common.token_stream(rounds * args.batch_size * (args.seq_len + 1), vocab)
    sequences = stream.view(rounds, args.batch_size, args.seq_len + 1)
    batches = [(s[:, :-1], s[:, 1:]) for s in sequences]
    all_targets = sequences[:, :, 1:]

    flops = {name: flops_per_token(model, all_targets, args.seq_len) for name, model in built.items()}
    k, n = largest_weight(built.get("gcnn") or built.get("reference") or next(iter(built.values())))
    peaks = {p: common.MatmulPeak(args.batch_size * args.seq_len, k, n, common.dtype_of(p)) for p in args.precision}
    trainers = {(name, p): Trainer(model, p) for name, model in built.items() for p in args.precision}
    seconds = run_rounds(trainers, peaks, batches, args.warmup)

    peak_results = {p: peak.result() for p, peak in peaks.items()}
    speeds = summarise(seconds, args.batch_size * args.seq_len, flops, peak_results)
    result.update(
        title="Training throughput (benchmarks 1 and 5)",
        settings={
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "warmup_rounds": args.warmup,
            "timed_rounds": args.repeats,
            "optimizer": OPTIMIZER,
            "data": source,
            "vocab_size": vocab,
        },
        flops_formula=__doc__.split("FLOPs per token = ", 1)[1].strip(),
        matmul_peak=peak_results,
        models={
            name: {
                "description": models.describe(model),
                "parameters": models.num_parameters(model),
                **flops[name],
                **speeds[name],
            }
            for name, model in built.items()
        },
    )
    result["table_markdown"] = table(result, args.precision)
    result["notes"] = [
        "tokens/s: median over the timed rounds; 'vs reference': median over rounds of (model tokens/s) / (reference "
        "tokens/s) in the same round; % of peak: achieved FLOP/s over the median torch.mm FLOP/s of the same precision "
        "in the same rounds. " + f"Data: {source}.",
    ]
    figure = common.bar_chart(
        f"Training tokens/s, batch {args.batch_size} x {args.seq_len}",
        "tokens/s",
        list(result["models"]),
        {p: [m[p]["tokens_per_s"] for m in result["models"].values()] for p in args.precision},
    )
    common.write_report("train", result, figure, args.out_dir)
    return result


if __name__ == "__main__":
    main()
