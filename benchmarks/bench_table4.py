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
from gcnn import runtime
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


def flops_per_token(model: nn.Module, ids: Tensor) -> float:
    """Floating-point operations of scoring per target token, counted by torch's FlopCounterMode on ``ids`` (matrix
    products and convolutions: the softmax's for the clusters these targets fall in)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        score(model, ids)
    return counter.get_total_flops() / ids[:, 1:].numel()


def recurrent_bytes_per_step(model: nn.Module) -> int | None:
    """Bytes in fp32 of the weights an LSTM reads at every sequential step (recurrent and projection matrices), or
    None for a model that does not step through time."""
    lstm = next((m for m in model.modules() if isinstance(m, nn.LSTM)), None)
    if lstm is None:
        return None
    return sum(p.numel() * 4 for n, p in lstm.named_parameters() if "_hh_" in n or "_hr_" in n)


class ReadBandwidth:
    """Bytes/s of summing a 256 MB buffer: the memory-read speed a matrix-vector step is bound by; timed as one more
    contender in the round-robin."""

    def __init__(self, megabytes: int = 256) -> None:
        self.buffer = torch.ones(megabytes * 2**20 // 4)
        self.samples: list[float] = []

    def run_once(self) -> None:
        self.samples.append(self.buffer.numel() * 4 / common.timed(lambda: self.buffer.sum()))


def table(result: dict[str, Any]) -> str:
    rows = []
    for run in result["runs"]:
        for name, m in run["models"].items():
            paper = PAPER.get(name, {})
            rows.append(
                [
                    name,
                    run["precision"],
                    run["threads"],
                    f"{m['throughput_tokens_per_s']:,.0f}",
                    f"{m['responsiveness_tokens_per_s']:,.0f}",
                    f"{m['throughput_vs_lstm']:.2f}x" if "throughput_vs_lstm" in m else "",
                    f"{m['responsiveness_vs_lstm']:.2f}x" if "responsiveness_vs_lstm" in m else "",
                    m["bound"],
                    *(f"{paper[k]:,}" if k in paper else "" for k in ("cpu", "gpu", "gpu_responsiveness")),
                ]
            )
    header = [
        "model",
        "precision",
        "threads",
        "throughput tokens/s",
        "responsiveness tokens/s",
        "throughput vs LSTM",
        "responsiveness vs LSTM",
        "share of this machine's bound",
        "paper: CPU tokens/s",
        "paper: GPU tokens/s",
        "paper: GPU responsiveness",
    ]
    return common.markdown_table(header, rows)


def targets_note(result: dict[str, Any]) -> str:
    """Each GCNN against the two targets (throughput >= the LSTM's, responsiveness >= 5x), with what meeting each
    would take as a share of the matmul peak: above 100%, the peak measured in the same rounds rules it out."""
    parts = []
    for run in result["runs"]:
        for name, m in run["models"].items():
            if "throughput_parity_needs_peak_share" not in m:
                continue
            tp, rs = m["throughput_parity_needs_peak_share"], m["responsiveness_5x_needs_peak_share"]
            met_tp, met_rs = m["throughput_vs_lstm"] >= 1, m["responsiveness_vs_lstm"] >= 5
            parts.append(
                f"{name} {run['precision']} {run['threads']} thread(s): throughput {m['throughput_vs_lstm']:.2f}x "
                + ("(met)" if met_tp else f"(parity needs {tp:.0%} of the matmul peak"
                   + ("; beyond the bound)" if tp > 1 else f", achieved {m['achieved_throughput_peak_share']:.0%})"))
                + f", responsiveness {m['responsiveness_vs_lstm']:.2f}x "
                + ("(met)" if met_rs else f"(5x needs {rs:.0%} of the matmul peak"
                   + ("; beyond the bound)" if rs > 1 else f", achieved {m['fraction_of_matmul_peak']:.0%})"))
            )
    return ("Targets (throughput >= the LSTM-2048's, responsiveness >= 5x), and what each would take at the GCNN's "
            "FLOPs per token: " + "; ".join(parts) + ".")


def plot(result: dict[str, Any]):
    """Throughput and responsiveness per model and setting, as bars."""
    groups, through, respond = [], [], []
    for run in result["runs"]:
        for name, m in run["models"].items():
            groups.append(f"{name}\n{run['precision']} {run['threads']}t")
            through.append(m["throughput_tokens_per_s"])
            respond.append(m["responsiveness_tokens_per_s"])
    return common.bar_chart(
        "Paper Table 4 protocol on this machine",
        "tokens/s",
        groups,
        {"throughput (750 x 20)": through, f"responsiveness (1 x {result['settings']['responsiveness_tokens']:,})": respond},
    )


def measure(built: dict[str, nn.Module], batch_ids: Tensor, stream_ids: Tensor, precision: str, repeats: int) -> dict:
    """One round-robin of every model's throughput and responsiveness, the matmul peak and the read bandwidth."""
    runs = [(m, protocol) for m in built for protocol in ("throughput", "responsiveness")]
    seconds: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    peak = common.MatmulPeak(2048, 2048, 4096, common.dtype_of(precision))
    bandwidth = ReadBandwidth()
    with torch.inference_mode():
        for model in built.values():  # untimed: first calls set up kernels and caches
            score(model, batch_ids[:8])
            score(model, stream_ids[:, :200])
        for _ in range(repeats):
            for name, protocol in runs:
                ids = batch_ids if protocol == "throughput" else stream_ids
                seconds[(name, protocol)].append(common.timed(lambda: score(built[name], ids)))
            peak.run_once()
            bandwidth.run_once()
    return {"seconds": seconds, "peak": peak.result()["flops_per_s"], "bandwidth": common.median(bandwidth.samples)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", choices=common.PRECISIONS, default=list(common.PRECISIONS))
    parser.add_argument("--thread-counts", nargs="+", type=int, default=[1, 2], help="torch threads to run each at")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--stream-tokens", type=int, default=15_000,
                        help="length of the responsiveness sequence (the paper: 15,000)")
    common.add_common_arguments(parser, repeats=3)
    args = parser.parse_args(argv)
    common.check_positive(parser, args, "repeats", "stream_tokens")
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
        vocab, batch, length, stream, names = GBW_VOCAB, (750, 20), 20, args.stream_tokens, {m: m for m in MODELS}
    cutoffs = tuple(c for c in GBW_CUTOFFS if c < vocab)
    batch_ids = zipf_ids((batch[0], length + 1), vocab, seed=1)
    stream_ids = zipf_ids((1, stream + 1), vocab, seed=2)
    result["settings"] = {
        "vocab_size": vocab,
        "cutoffs": list(cutoffs),
        "throughput_batch": list(batch) + [length],
        "responsiveness_tokens": stream,
        "repeats": args.repeats,
        "runtime": "gcnn.runtime.optimize(model, precision): the weights in that precision, the GCNN's convolutions "
        "with folded weight norm (and oneDNN-packed in bf16), as gcnn's own inference uses them",
        "ids": "Zipf (p ~ 1/rank) over the vocabulary",
        "target_share_per_cluster": cluster_shares(batch_ids[:, 1:], cutoffs),
    }
    result["models"] = {}
    result["runs"] = []
    for precision in args.precisions:
        torch.manual_seed(0)
        built = {}
        for m in args.models:
            model = gcnn.build_model(names[m], vocab_size=vocab, adaptive_cutoffs=cutoffs)
            if m not in result["models"]:  # counted on the plain model: the runtime's packed kernels are not
                with torch.inference_mode():  # visible to FlopCounterMode
                    result["models"][m] = {
                        "description": model.config.describe(),
                        "parameters": model.num_parameters(),
                        "flops_per_token": round(flops_per_token(model, batch_ids[:50])),
                        "recurrent_bytes_per_step_fp32": recurrent_bytes_per_step(model),
                    }
            built[m] = runtime.optimize(model, precision)
        for threads in args.thread_counts:
            torch.set_num_threads(threads)
            got = measure(built, batch_ids, stream_ids, precision, args.repeats)
            run: dict[str, Any] = {"precision": precision, "threads": threads,
                                   "matmul_peak_flops_per_s": round(got["peak"]),
                                   "read_bandwidth_bytes_per_s": round(got["bandwidth"]), "models": {}}
            for name in built:
                rates = {}
                for protocol in ("throughput", "responsiveness"):
                    tokens = batch[0] * length if protocol == "throughput" else stream
                    rates[protocol] = tokens / common.median(got["seconds"][(name, protocol)])
                info = result["models"][name]
                entry: dict[str, Any] = {
                    "throughput_tokens_per_s": round(rates["throughput"], 1),
                    "responsiveness_tokens_per_s": round(rates["responsiveness"], 1),
                    "samples_seconds": {p: [round(x, 4) for x in got["seconds"][(name, p)]]
                                        for p in ("throughput", "responsiveness")},
                }
                step_bytes = info["recurrent_bytes_per_step_fp32"]
                if step_bytes is None:  # compute bound: achieved FLOP/s over the matmul peak
                    share = info["flops_per_token"] * rates["responsiveness"] / got["peak"]
                    entry["fraction_of_matmul_peak"] = float(f"{share:.4g}")
                    entry["bound"] = f"{share:.0%} of matmul peak"
                else:  # the sequential steps read the recurrent weights once per token
                    step_bytes = step_bytes // (2 if precision == "bf16" else 1)
                    share = step_bytes * rates["responsiveness"] / got["bandwidth"]
                    entry["fraction_of_read_bandwidth"] = float(f"{share:.4g}")
                    entry["bound"] = f"{share:.0%} of read bandwidth"
                run["models"][name] = entry
            lstm = run["models"].get("lstm-2048")
            for name, entry in run["models"].items():
                if lstm is not None and name != "lstm-2048":
                    entry["throughput_vs_lstm"] = round(entry["throughput_tokens_per_s"] / lstm["throughput_tokens_per_s"], 3)
                    entry["responsiveness_vs_lstm"] = round(
                        entry["responsiveness_tokens_per_s"] / lstm["responsiveness_tokens_per_s"], 3)
                    # what the targets ask of the GCNN, as a share of the matmul peak at its FLOPs per token
                    flops_token = result["models"][name]["flops_per_token"]
                    entry["throughput_parity_needs_peak_share"] = round(
                        lstm["throughput_tokens_per_s"] * flops_token / got["peak"], 3)
                    entry["responsiveness_5x_needs_peak_share"] = round(
                        5 * lstm["responsiveness_tokens_per_s"] * flops_token / got["peak"], 3)
                    entry["achieved_throughput_peak_share"] = round(
                        entry["throughput_tokens_per_s"] * flops_token / got["peak"], 3)
            result["runs"].append(run)
    result["title"] = "The paper's Table 4 on this machine (benchmark 2)"
    result["table_markdown"] = table(result)
    flops = {n: m["flops_per_token"] for n, m in result["models"].items()}
    result["notes"] = [
        f"tokens/s: scored tokens over the median seconds of {args.repeats} repeats, all models taking turns with a "
        "matmul (2048 x 2048 x 4096) and a 256 MB read, after a short untimed call of each. Bound: for the GCNNs, the "
        "FLOPs of scoring per token (torch's FlopCounterMode: "
        + ", ".join(f"{n} {f / 1e6:.1f} MFLOP" for n, f in flops.items())
        + ") times the responsiveness rate over the matmul peak measured in the same rounds; for the LSTM, the bytes "
        "of recurrent and projection weights read at each sequential step times the responsiveness rate over the "
        f"read bandwidth measured in the same rounds. Share of targets per softmax cluster (head, tails): "
        f"{result['settings']['target_share_per_cluster']}. The paper's columns are its own figures on its own "
        "hardware (CPU thread count not stated), for comparison only.",
    ]
    result["notes"].append(targets_note(result))
    common.write_report("table4", result, plot(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
