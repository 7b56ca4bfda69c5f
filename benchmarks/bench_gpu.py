"""Benchmark 6: the GPU check, in one run on one CUDA GPU (`benchmarks/gpu_check.sh` runs it; under 5 minutes).

    python benchmarks/bench_gpu.py                       # on a CUDA GPU
    python benchmarks/bench_gpu.py --smoke               # CPU fallback: tiny models, a few seconds (tested)

Five parts, each timed with CUDA synchronisation, medians over the timed repeats:

1. Matmul peak: ``torch.mm`` of square matrices (8192) in bf16 and fp16 -- the yardstick of part 2.
2. Training throughput, bf16 and fp16 autocast (fp16 with a gradient scaler): GCNN-8 and GCNN-14 (the paper's
   WikiText-103 shapes, vocabulary 267,735, adaptive softmax) and the plain PyTorch reference (reference_gcnn.py) at
   GCNN-8's shape, one step = forward + backward + clipping 0.1 + Nesterov SGD; achieved FLOP/s (bench_train's
   FLOPs per token) as a fraction of part 1's peak of the same precision; GCNN-8 / reference measured side by side.
3. The paper's Table 4 GPU columns (bench_table4's protocol): throughput = 750 x 20 tokens scored as one batch,
   responsiveness = one sequence of 15,000 tokens, for LSTM-2048, GCNN-9 and GCNN-8B (Google Billion Word's
   vocabulary of 793,471, Zipf ids), fp32 and bf16.
4. Batch-1 generation: greedy continuation of one prompt by GCNN-8 with its incremental cache, tokens/s.
5. One DDP step over NCCL (a process group of one on this GPU, in a child process): the gradients DDP all-reduces equal those of the
   same step without DDP, and an all_reduce returns the sum.

The --smoke run does all five on the CPU with tiny models (gloo instead of NCCL, fp32 matmul for the peak where the
CPU lacks fast half precision): it checks the code, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

import bench_table4
import bench_train
import common
import gcnn
import models
from gcnn.decoding import generate
from reference_gcnn import ReferenceGCNN

WT103_VOCAB = 267_735
WT103_CUTOFFS = (2000, 10000, 50000)  # gcnn-8's; the reference uses them too, so both compute the same function
TRAIN_PRECISIONS = ("bf16", "fp16")
TABLE4_PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    return common.timed(lambda: (fn(), sync(device)))


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


# ------------------------------------------------------------------------------------------------ 1. matmul peak
def matmul_peak(size: int, precision: str, device: torch.device, repeats: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, DTYPES[precision])
    b = torch.randn(size, size, generator=generator).to(device, DTYPES[precision])
    torch.mm(a, b)
    samples = [2 * size**3 / timed(lambda: torch.mm(a, b), device) for _ in range(repeats)]
    return {"flops_per_s": common.median(samples), "shape_mkn": [size] * 3, "samples_flops_per_s": samples}


# ------------------------------------------------------------------------------------------------ 2. training
class Stepper:
    """One model in one precision: forward, backward, clip, Nesterov step (fp16 through a gradient scaler)."""

    def __init__(self, model: nn.Module, precision: str, device: torch.device) -> None:
        self.model, self.precision, self.device = model, precision, device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(self, tokens: Tensor, targets: Tensor) -> float:
        def run() -> None:
            with autocast(self.precision, self.device):
                loss = models.loss_of(self.model, tokens, targets)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
                self.scaler.step(self.optimizer)
                self.scaler.update()

        return timed(run, self.device)


def training(args, device: torch.device, peaks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if args.smoke:
        vocab, cutoffs, batch, seq = 200, (20, 60), 2, 16
        builders = {
            "gcnn-8": lambda: gcnn.build_model("gcnn-tiny", vocab_size=vocab, dropout=0.0),
            "gcnn-14": lambda: gcnn.build_model("gcnn-tiny", vocab_size=vocab, dropout=0.0),
            "reference": lambda: ReferenceGCNN(vocab, embed_dim=16, width=32, kernel=3, num_layers=3, cutoffs=cutoffs),
        }
    else:
        vocab, cutoffs, batch, seq = WT103_VOCAB, WT103_CUTOFFS, args.batch_size, args.seq_len
        builders = {
            "gcnn-8": lambda: gcnn.build_model("gcnn-8", vocab_size=vocab, dropout=0.0),
            "gcnn-14": lambda: gcnn.build_model("gcnn-14", vocab_size=vocab, dropout=0.0),
            "reference": lambda: ReferenceGCNN(vocab, cutoffs=cutoffs),  # GCNN-8's shape
        }
    built = {name: build().to(device).train() for name, build in builders.items()}
    rounds = args.warmup + args.repeats
    ids = bench_table4.zipf_ids((rounds, batch, seq + 1), vocab, seed=3)
    batches = [(s[:, :-1].to(device), s[:, 1:].to(device)) for s in ids]
    flops = {name: bench_train.flops_per_token(m, ids[:, :, 1:], seq) for name, m in built.items()}
    steppers = {(n, p): Stepper(m, p, device) for n, m in built.items() for p in args.train_precisions}
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in steppers}
    for r, (tokens, targets) in enumerate(batches):  # round-robin: every contender one step per round
        for key, stepper in steppers.items():
            elapsed = stepper.step(tokens, targets)
            if r >= args.warmup:
                seconds[key].append(elapsed)
    out: dict[str, Any] = {}
    for (name, precision), times in seconds.items():
        tokens_per_s = common.median([batch * seq / t for t in times])
        achieved = tokens_per_s * flops[name]["flops_per_token"]
        ref = seconds[("reference", precision)]
        entry = out.setdefault(name, {
            "parameters": models.num_parameters(built[name]),
            "description": models.describe(built[name]), **flops[name],
        })
        entry[precision] = {
            "tokens_per_s": round(tokens_per_s, 1),
            "step_seconds_median": round(common.median(times), 5),
            "fraction_of_peak": achieved / peaks[precision]["flops_per_s"],
            "ratio_to_reference": common.median([r / t for t, r in zip(times, ref)]) if name != "gcnn-14" else None,
        }
    del built, steppers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"settings": {"vocab_size": vocab, "cutoffs": list(cutoffs), "batch_size": batch, "seq_len": seq,
                         "warmup_rounds": args.warmup, "timed_rounds": args.repeats,
                         "optimizer": bench_train.OPTIMIZER}, "models": out}


# ------------------------------------------------------------------------------------------------ 3. Table 4
def table4(args, device: torch.device) -> dict[str, Any]:
    if args.smoke:
        vocab, batch, length, stream = 200, 6, 4, 50
        names = {"lstm-2048": "lstm-tiny", "gcnn-9": "gcnn-tiny", "gcnn-8b": "gcnn-tiny"}
    else:
        vocab, batch, length, stream = bench_table4.GBW_VOCAB, 750, 20, 15_000
        names = {m: m for m in bench_table4.MODELS}
    cutoffs = tuple(c for c in bench_table4.GBW_CUTOFFS if c < vocab)
    batch_ids = bench_table4.zipf_ids((batch, length + 1), vocab, seed=1).to(device)
    stream_ids = bench_table4.zipf_ids((1, stream + 1), vocab, seed=2).to(device)
    out: dict[str, Any] = {}
    for name in bench_table4.MODELS:
        model = gcnn.build_model(names[name], vocab_size=vocab, adaptive_cutoffs=cutoffs).to(device).eval()
        entry = out.setdefault(name, {"parameters": model.num_parameters(), "paper": bench_table4.PAPER[name]})
        for precision in args.table4_precisions:
            with torch.inference_mode(), autocast(precision, device):
                bench_table4.score(model, batch_ids[:8])  # untimed: kernels, caches
                bench_table4.score(model, stream_ids[:, :200])
                t = [timed(lambda: bench_table4.score(model, batch_ids), device) for _ in range(args.repeats)]
                s = [timed(lambda: bench_table4.score(model, stream_ids), device) for _ in range(args.repeats)]
            entry[precision] = {"throughput_tokens_per_s": round(batch * length / common.median(t), 1),
                                "responsiveness_tokens_per_s": round(stream / common.median(s), 1)}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"settings": {"vocab_size": vocab, "cutoffs": list(cutoffs), "throughput_batch": [batch, length],
                         "responsiveness_tokens": stream, "repeats": args.repeats}, "models": out}


# ------------------------------------------------------------------------------------------------ 4. generation
def generation(args, device: torch.device) -> dict[str, Any]:
    arch, vocab, tokens = ("gcnn-tiny", 200, 20) if args.smoke else ("gcnn-8", WT103_VOCAB, args.gen_tokens)
    model = gcnn.build_model(arch, vocab_size=vocab, dropout=0.0).to(device).eval()
    prompt = [[0, *range(5, 25)]]
    generate(model, prompt, max_tokens=4, greedy=True)  # untimed
    samples = []
    for _ in range(args.repeats):
        seconds = timed(lambda: generate(model, prompt, max_tokens=tokens, greedy=True), device)
        samples.append(tokens / seconds)
    out = generate(model, prompt, max_tokens=tokens, greedy=True)
    return {"arch": arch, "vocab_size": vocab, "new_tokens": tokens, "generated": len(out[0]),
            "tokens_per_s": round(common.median(samples), 1), "ms_per_token": round(1000 / common.median(samples), 3)}


# ------------------------------------------------------------------------------------------------ 5. DDP step
def ddp_step(args, device: torch.device) -> dict[str, Any]:
    """In a child process (a process group, once made, stays in its process; and tearing one down right after a
    collective can deadlock on the interpreter lock), which prints its result as JSON and exits at once."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-child", *(["--smoke"] if args.smoke else [])]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return {"backend": "nccl" if device.type == "cuda" else "gloo", "ok": False, "error": "timed out after 180 s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"backend": "nccl" if device.type == "cuda" else "gloo", "ok": False,
                "error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def ddp_child(args) -> None:
    device = torch.device("cuda", 0) if not args.smoke else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    result = _ddp_step(args, device)
    print(json.dumps(result), flush=True)
    os._exit(0)  # no teardown: the process group goes with the process


def _ddp_step(args, device: torch.device) -> dict[str, Any]:
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    arch, vocab = ("gcnn-tiny", 200) if args.smoke else ("gcnn-8", WT103_VOCAB)
    torch.manual_seed(0)
    plain = gcnn.build_model(arch, vocab_size=vocab, dropout=0.0).to(device)
    wrapped = gcnn.build_model(arch, vocab_size=vocab, dropout=0.0).to(device)
    wrapped.load_state_dict(plain.state_dict())
    ddp = nn.parallel.DistributedDataParallel(
        wrapped, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    ids = bench_table4.zipf_ids((4, 65), vocab, seed=4).to(device)
    plain(ids[:, :-1], ids[:, 1:]).loss.backward()
    seconds = timed(lambda: ddp(ids[:, :-1], ids[:, 1:]).loss.backward(), device)
    grads = [(a.grad, b.grad) for a, b in zip(plain.parameters(), wrapped.parameters()) if a.grad is not None]
    diff = max(float((a - b).abs().max()) for a, b in grads)
    total = torch.ones(3, device=device) * 2
    dist.all_reduce(total)
    ok = diff < 1e-5 and total.tolist() == [2.0, 2.0, 2.0]
    return {"backend": backend, "world_size": 1, "arch": arch, "step_seconds": round(seconds, 4),
            "max_grad_diff_vs_plain": diff, "all_reduce_ok": total.tolist() == [2.0, 2.0, 2.0], "ok": ok}


# ------------------------------------------------------------------------------------------------ report
def tables(result: dict[str, Any]) -> str:
    parts = []
    train = result["training"]
    precisions = [p for p in TRAIN_PRECISIONS if p in result["settings"]["train_precisions"]]
    header, rows = bench_train.throughput_rows(train["models"], precisions)
    peaks = ", ".join(f"{p} {v['flops_per_s'] / 1e12:,.1f} TFLOP/s" for p, v in result["matmul_peak"].items())
    parts += ["Training throughput:", common.markdown_table(header, rows), f"Matmul peak (torch.mm, square): {peaks}."]
    t4 = result["table4"]
    header = ["model", "params (M)"]
    for p in result["settings"]["table4_precisions"]:
        header += [f"{p} throughput tokens/s", f"{p} responsiveness tokens/s"]
    header += ["paper: GPU tokens/s", "paper: GPU responsiveness"]
    rows = []
    for name, m in t4["models"].items():
        row = [name, f"{m['parameters'] / 1e6:.0f}"]
        for p in result["settings"]["table4_precisions"]:
            row += [f"{m[p]['throughput_tokens_per_s']:,.0f}", f"{m[p]['responsiveness_tokens_per_s']:,.0f}"]
        row += [f"{m['paper']['gpu']:,}", f"{m['paper']['gpu_responsiveness']:,}"]
        rows.append(row)
    parts += ["The paper's Table 4, GPU columns:", common.markdown_table(header, rows)]
    g, d = result["generation"], result["ddp"]
    parts.append(f"Batch-1 greedy generation, {g['arch']}: {g['tokens_per_s']:,.0f} tokens/s "
                 f"({g['ms_per_token']} ms per token, {g['new_tokens']} new tokens). One DDP step over {d['backend']}: "
                 f"{'ok' if d['ok'] else 'FAILED'} (gradient difference to the plain step {d['max_grad_diff_vs_plain']:.1e}, "
                 f"{d['step_seconds']} s).")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="training sequences per step (default: 32)")
    parser.add_argument("--seq-len", type=int, default=256, help="training tokens per sequence (default: 256)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training rounds first (default: 3)")
    parser.add_argument("--gen-tokens", type=int, default=200, help="new tokens per generation (default: 200)")
    parser.add_argument("--peak-size", type=int, default=8192, help="matmul peak: square size (default: 8192)")
    parser.add_argument("--train-precisions", nargs="+", choices=TRAIN_PRECISIONS, default=list(TRAIN_PRECISIONS))
    parser.add_argument("--table4-precisions", nargs="+", choices=TABLE4_PRECISIONS, default=list(TABLE4_PRECISIONS))
    common.add_common_arguments(parser, repeats=10)
    parser.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)  # part 5, in its own process
    args = parser.parse_args(argv)
    if args.ddp_child:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        ddp_child(args)
    common.check_positive(parser, args, "batch_size", "seq_len", "repeats", "gen_tokens", "peak_size")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    if args.smoke:
        args.repeats, args.warmup, args.peak_size = min(args.repeats, 2), min(args.warmup, 1), min(args.peak_size, 256)
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible to this PyTorch (torch.cuda.is_available() is False); "
                     "use --smoke for the CPU check of this script")
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the Table 4 columns
    result = common.start(args)
    result["machine"]["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result["machine"]["cuda"] = torch.version.cuda
    result["settings"] = {"device": str(device), "train_precisions": args.train_precisions,
                          "table4_precisions": args.table4_precisions, "repeats": args.repeats}
    peak_precision = {p: (p if device.type == "cuda" else "fp32") for p in args.train_precisions}
    result["matmul_peak"] = {p: dict(matmul_peak(args.peak_size, q, device, args.repeats), dtype=q)
                             for p, q in peak_precision.items()}
    result["training"] = training(args, device, result["matmul_peak"])
    result["table4"] = table4(args, device)
    result["generation"] = generation(args, device)
    result["ddp"] = ddp_step(args, device)
    result["title"] = "GPU check (benchmark 6)" + (" -- smoke run on the CPU" if args.smoke else "")
    result["table_markdown"] = tables(result)
    result["notes"] = [
        "tokens/s: medians over the timed repeats, with torch.cuda.synchronize around each; training contenders take "
        "turns one step each per round, and 'vs reference' is the median over rounds of the ratio within a round. "
        "% of peak: achieved FLOP/s (bench_train's FLOPs per token) over the torch.mm peak of the same dtype. The "
        "paper's columns are its own figures on its own GPU (2017), for comparison only.",
    ]
    common.write_report("gpu" if not args.smoke else "gpu-smoke", result, None, args.out_dir)
    return result


if __name__ == "__main__":
    main()
