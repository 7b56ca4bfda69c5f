"""Benchmark 3: generation at batch 1, incremental decoding against re-running the context, for the GCNN, the LSTM
and the Transformer side by side (the models of bench_train.py, about equal parameter counts).

    python benchmarks/bench_generate_compare.py          # 64-token prompt, 64 new tokens, greedy, 3 repeats

Modes (each produces the next token from the full log-distribution, greedily):
  cache   the prompt once, then one token per call with the model's cache (the GCNN's rolling convolution inputs,
          the LSTM's (h, c) state, the Transformer's keys and values)
  window  re-run only the last receptive-field tokens (exact for a convolutional model; the reference has no cache)
  full    re-run the whole context at every step
Tokens/s = new tokens / seconds, the prompt included. Modes and models take turns, one generation each per round.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor, nn

import common
import models
from gcnn import runtime
from reference_gcnn import ReferenceGCNN

MODES = ("cache", "window", "full")


def modes_for(name: str, model: nn.Module) -> list[str]:
    if isinstance(model, ReferenceGCNN):
        return ["window", "full"]
    return ["cache", "window", "full"] if name == "gcnn" else ["cache", "full"]


def last_log_probs(model: nn.Module, tokens: Tensor, cache: Any = None) -> Tensor:
    """Log-distribution (V,) of the token after ``tokens`` (1, T)."""
    if isinstance(model, ReferenceGCNN):
        return model.next_token_log_probs(tokens)[0]
    return model.next_token_log_probs(tokens, positions=[tokens.shape[1] - 1], cache=cache)[0, -1]


def generate(model: nn.Module, prompt: Tensor, new_tokens: int, mode: str) -> list[int]:
    """Greedy continuation of ``prompt`` (1, P) by ``new_tokens`` tokens."""
    out: list[int] = []
    if mode == "cache":
        cache = model.new_cache(1)
        log_probs = last_log_probs(model, prompt, cache)
        while True:
            out.append(int(log_probs.argmax()))
            if len(out) == new_tokens:
                return out
            log_probs = last_log_probs(model, torch.tensor([[out[-1]]]), cache)
    context = prompt
    window = model.receptive_field if mode == "window" else None
    for _ in range(new_tokens):
        out.append(int(last_log_probs(model, context if window is None else context[:, -window:]).argmax()))
        context = torch.cat([context, torch.tensor([[out[-1]]])], dim=1)
    return out


def table(result: dict[str, Any]) -> str:
    rows = []
    for name, m in result["models"].items():
        full = m["modes"]["full"]["tokens_per_s"]
        for mode, r in m["modes"].items():
            rows.append(
                [
                    name,
                    mode,
                    f"{r['tokens_per_s']:,.1f}",
                    f"{r['tokens_per_s'] / full:.1f}x",
                    "yes" if r["same_tokens_as_full"] else "NO",
                ]
            )
    return common.markdown_table(["model", "mode", "tokens/s", "vs full re-run", "same tokens as full re-run"], rows)


def plot(result: dict[str, Any]):
    """New tokens/s per model, one bar per decoding mode."""
    models_ = result["models"]
    return common.bar_chart(
        f"Batch-1 greedy generation, {result['settings']['precision']}",
        "new tokens/s",
        list(models_),
        {
            mode: [m["modes"].get(mode, {}).get("tokens_per_s", float("nan")) for m in models_.values()]
            for mode in MODES
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--precision", choices=common.PRECISIONS, default="fp32")
    parser.add_argument("--models", nargs="+", choices=models.MODEL_NAMES, default=list(models.MODEL_NAMES))
    common.add_common_arguments(parser, repeats=3)
    args = parser.parse_args(argv)
    common.check_positive(parser, args, "prompt_len", "new_tokens", "repeats")
    if args.smoke:
        args.prompt_len, args.new_tokens = min(args.prompt_len, 8), min(args.new_tokens, 6)
    result = common.start(args)

    vocab = 200 if args.smoke else common.WIKITEXT2_VOCAB
    total = args.prompt_len + args.new_tokens
    built = {
        name: m.eval()
        for name, m in models.build_models(vocab, smoke=args.smoke, names=args.models, max_len=total).items()
    }
    if "gcnn" in built:  # as `gcnn generate` runs it
        runtime.optimize(built["gcnn"], "bf16" if args.precision == "bf16" else "fp32")
    valid = None if args.smoke else common.wikitext2_ids("valid")
    if valid is None:
        prompt, source = torch.randint(0, vocab, (1, args.prompt_len)), "uniform random ids"
    else:
        prompt, source = valid[: args.prompt_len].view(1, -1), "the first tokens of WikiText-2's validation set"

    runs = [(name, mode) for name, model in built.items() for mode in modes_for(name, model)]
    seconds: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    tokens: dict[tuple[str, str], list[int]] = {}
    with torch.inference_mode(), common.autocast(args.precision):
        for name, mode in runs:  # untimed: first calls set up kernels and caches
            generate(built[name], prompt, 2, mode)
        for _ in range(args.repeats):
            for name, mode in runs:
                start = time.perf_counter()
                tokens[(name, mode)] = generate(built[name], prompt, args.new_tokens, mode)
                seconds[(name, mode)].append(time.perf_counter() - start)

    result.update(
        title=f"Generation at batch 1 (benchmark 3), {args.precision}",
        settings={
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "precision": args.precision,
            "prompt": source,
            "repeats": args.repeats,
            "decoding": "greedy over the full log-distribution",
        },
        models={
            name: {
                "description": models.describe(model),
                "parameters": models.num_parameters(model),
                "receptive_field": model.receptive_field,
                "modes": {
                    mode: {
                        "tokens_per_s": round(args.new_tokens / common.median(seconds[(name, mode)]), 2),
                        "samples_seconds": [round(s, 4) for s in seconds[(name, mode)]],
                        "same_tokens_as_full": tokens[(name, mode)] == tokens[(name, "full")],
                    }
                    for mode in modes_for(name, model)
                },
            }
            for name, model in built.items()
        },
    )
    result["table_markdown"] = table(result)
    result["notes"] = [
        f"Prompt: {args.prompt_len} tokens ({source}); {args.new_tokens} new tokens, so 'full' re-runs contexts of "
        f"{args.prompt_len} to {total - 1} tokens. tokens/s: new tokens over the median seconds of {args.repeats} "
        "generations, the prompt included, after one short untimed generation per model and mode."
    ]
    common.write_report("generate-compare", result, plot(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
