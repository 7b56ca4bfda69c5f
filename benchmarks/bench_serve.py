"""gcnn serve under concurrent clients on loopback: throughput and latency, batched against one request at a time.

    python benchmarks/bench_serve.py --note "machine shared with other jobs"

Two `gcnn serve` processes run side by side (OMP_NUM_THREADS=--threads each): one with the running batch (requests
share forward passes, rows join and leave between steps), one with --no-batching (one request at a time, the
baseline). For 1, 8 and 32 concurrent clients, every client runs a bounded loop of --requests-per-client requests
(POST /v1/completions, a prompt of --prompt-tokens words, --max-tokens sampled tokens, temperature 1, a fixed seed per
request, no stop), one after the other; the two servers are measured in alternation, --repeats rounds, medians
reported. Throughput = generated tokens / wall time of the round; latency = one request's time from sending to the
last byte, p50 and p99 over all the requests of the round.

The model has random weights (speed does not depend on them): --arch (default gcnn-small) over a word vocabulary of
--vocab words, or --model FOLDER for a trained one. Writes benchmarks/results/YYYY-MM-DD-serve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

CONCURRENCY = (1, 8, 32)
MODES = ("batched", "one-at-a-time")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="gcnn-small")
    p.add_argument("--model", type=Path, help="a trained model folder instead of a random --arch")
    p.add_argument("--vocab", type=int, default=10000, help="words in the random model's vocabulary (default 10000)")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--requests-per-client", type=int, nargs=3, default=(8, 3, 2), metavar=("C1", "C8", "C32"),
                   help="the bounded loop of each client at 1, 8 and 32 clients (default 8 3 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    common.add_common_arguments(p, repeats=3)
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = 1
    if args.smoke:
        args.arch, args.vocab, args.max_tokens, args.repeats = "gcnn-tiny", 200, 8, 1
        args.requests_per_client = (2, 1, 1)
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_model_folder(args, folder: Path) -> Path:
    import torch

    import gcnn
    from gcnn.data import Vocabulary

    words = {f"w{i}": args.vocab - i for i in range(args.vocab - 2)}
    vocab = Vocabulary.from_counts(words)
    torch.manual_seed(0)
    model = gcnn.build_model(args.arch, vocab_size=len(vocab))
    gcnn.io.write_model(model, folder, vocab=vocab)
    return folder


def start_server(folder: Path, threads: int, batching: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(common.REPO / "src"))
    cmd = [sys.executable, "-m", "gcnn", "serve", str(folder), "--port", str(port), "--device", "cpu",
           "--queue-size", "256", "--max-batch", "64"] + ([] if batching else ["--no-batching"])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(base: str, proc: subprocess.Popen) -> None:
    import httpx

    async with httpx.AsyncClient() as c:
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if (await c.get(base + "/health", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start in 120 s")


async def run_round(base: str, clients: int, per_client: int, words: list[str], args, seed: int) -> dict:
    import httpx

    latencies: list[float] = []
    tokens = 0
    rng = random.Random(seed)
    prompts = [[" ".join(rng.choice(words) for _ in range(args.prompt_tokens)) for _ in range(per_client)]
               for _ in range(clients)]

    async def client(c: httpx.AsyncClient, mine: list[str], k: int):
        nonlocal tokens
        for j, prompt in enumerate(mine):
            began = time.perf_counter()
            r = await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": args.max_tokens,
                                                      "temperature": 1.0, "seed": seed * 1000 + k * 10 + j})
            r.raise_for_status()
            latencies.append(time.perf_counter() - began)
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as c:
        began = time.perf_counter()
        await asyncio.gather(*(client(c, prompts[k], k) for k in range(clients)))
        wall = time.perf_counter() - began
    latencies.sort()
    return {"requests": len(latencies), "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            "requests_per_s": len(latencies) / wall, "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99)}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = (len(sorted_values) - 1) * q / 100
    lo = int(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


async def measure(args, bases: dict[str, str], words: list[str]) -> dict:
    per = dict(zip(CONCURRENCY, args.requests_per_client))
    rounds: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in args.concurrency} for m in MODES}
    for name, base in bases.items():  # warm-up: one request each
        await run_round(base, 1, 1, words, args, seed=99)
    for repeat in range(args.repeats):
        for clients in args.concurrency:
            order = MODES if repeat % 2 == 0 else MODES[::-1]
            for mode in order:
                result = await run_round(bases[mode], clients, per.get(clients, 2), words, args, seed=repeat)
                rounds[mode][clients].append(result)
                print(f"{mode:14s} clients {clients:3d}: {result['tokens_per_s']:8.1f} tok/s, p50 "
                      f"{result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s", file=sys.stderr)
    return rounds


def summarise(rounds: dict) -> dict:
    out = {}
    for mode, by_clients in rounds.items():
        out[mode] = {}
        for clients, results in by_clients.items():
            out[mode][clients] = {key: common.median([r[key] for r in results])
                                  for key in ("tokens_per_s", "requests_per_s", "p50_s", "p99_s")}
            out[mode][clients]["requests_per_round"] = results[0]["requests"]
    return out


def plot(summary: dict, concurrency: list[int]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style, colour in zip(MODES, ("o-", "s--"), ("tab:blue", "tab:orange")):
        a.plot(concurrency, [summary[mode][c]["tokens_per_s"] for c in concurrency], style, color=colour, label=mode)
        b.plot(concurrency, [summary[mode][c]["p50_s"] for c in concurrency], style, color=colour,
               label=f"{mode} p50")
        b.plot(concurrency, [summary[mode][c]["p99_s"] for c in concurrency], style, color=colour, alpha=0.4,
               label=f"{mode} p99")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel("generated tokens / s")
    b.set_ylabel("request latency (s)")
    b.set_yscale("log")
    fig.suptitle("gcnn serve on loopback: running batch vs one request at a time")
    fig.tight_layout()
    return fig


def replot(json_path: Path) -> None:
    """Draw the PNG of a result again from its JSON (``--replot FILE``)."""
    import json

    result = json.loads(json_path.read_text())
    summary = {m: {int(c): v for c, v in s.items()} for m, s in result["summary"].items()}
    concurrency = sorted(next(iter(summary.values())))
    plot(summary, concurrency).savefig(json_path.with_suffix(".png"), dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--replot":
        replot(Path(sys.argv[2]))
        return 0
    args = parse_args(argv)
    result = common.start(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or random_model_folder(args, Path(tmp) / "model")
        from gcnn.io import read_vocab

        vocab = read_vocab(folder)
        words = [w for w in vocab.itos if not w.startswith("<")][:2000]
        servers = {mode: start_server(folder, args.threads, mode == "batched") for mode in MODES}
        try:
            bases = {mode: base for mode, (_, base) in servers.items()}
            for mode, (proc, base) in servers.items():
                asyncio.run(wait_up(base, proc))
            rounds = asyncio.run(measure(args, bases, words))
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
            for proc, _ in servers.values():
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    summary = summarise(rounds)
    rows = []
    for clients in args.concurrency:
        b, o = summary["batched"][clients], summary["one-at-a-time"][clients]
        rows.append([clients, b["requests_per_round"], f"{b['tokens_per_s']:,.0f}", f"{o['tokens_per_s']:,.0f}",
                     f"{b['tokens_per_s'] / o['tokens_per_s']:.2f}x", f"{b['p50_s']:.3f} / {b['p99_s']:.3f}",
                     f"{o['p50_s']:.3f} / {o['p99_s']:.3f}"])
    result.update(
        title="gcnn serve: throughput and latency under concurrent clients, batched vs one at a time",
        settings={"arch": None if args.model else args.arch, "model": str(args.model) if args.model else None,
                  "vocab": len(vocab), "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
                  "requests_per_client": dict(zip(CONCURRENCY, args.requests_per_client)),
                  "repeats": args.repeats, "server_threads": args.threads},
        summary={mode: {str(c): v for c, v in s.items()} for mode, s in summary.items()},
        rounds={mode: {str(c): v for c, v in r.items()} for mode, r in rounds.items()},
        table_markdown=common.markdown_table(
            ["clients", "requests / round", "batched tok/s", "one-at-a-time tok/s", "speed-up",
             "batched p50 / p99 (s)", "one-at-a-time p50 / p99 (s)"], rows),
        notes=[
            f"Each request: a {args.prompt_tokens}-word prompt, {args.max_tokens} sampled tokens. Medians over "
            f"{args.repeats} rounds; the two servers (one torch thread each) were measured in alternation, so the "
            "ratios compare like with like even on a shared machine; absolute numbers depend on the machine's load.",
        ],
    )
    common.write_report("serve" if not args.smoke else "serve-smoke", result,
                        plot(summary, args.concurrency), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
