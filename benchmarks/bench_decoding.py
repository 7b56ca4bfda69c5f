"""Decoding speed for speech/OCR decoders, in one run: a beam step over B hypotheses, and batch-1 generation against
this machine's weight-bandwidth bound.

    python benchmarks/bench_decoding.py --note "shared machine"      # a few minutes
    python benchmarks/bench_decoding.py --smoke                      # tiny models: checks that it runs

beam step   B hypotheses (1, 16, 128, 750), each advanced by one token, with its next-token log-distribution over
            WikiText-2's 33,278 words (random weights: speed does not depend on them). Contenders, in a round-robin
            (each takes one turn per round; medians over rounds):
              gcnn incremental  one step of the model over a batched convolution cache (the last k-1 inputs of
                                each convolution per hypothesis);
              gcnn Scorer       gcnn.Scorer.advance: the same step plus the scorer's bookkeeping (states, the
                                batching of cached rows, storing each new state's row and distribution);
              gcnn re-run 49    re-running a 49-token history per hypothesis (what flashlight's ConvLM does);
              lstm incremental  one step of an LSTM of about the GCNN's parameter count over its (h, c) states;
              lstm Scorer       the LSTM through gcnn.Scorer.advance;
              lstm same step weights   an LSTM whose recurrent weights are as many as the GCNN's convolution
                                weights (the total-parameter match is narrow: its parameters are mostly the
                                embedding), incremental.
            Each also "state only" (the hidden states, no output distribution) for the raw model contenders.
            GCNN: gcnn-small's shape (embed 128, 6 x [4, 256]) with gcnn.runtime.optimize(model, "fp32") (a step
            is one matrix product per convolution over its window of k inputs; plain F.conv1d on a 1-frame input
            is several times slower on this CPU); LSTM: 2 layers, width chosen so that the total parameter count
            is closest to the GCNN's (benchmarks/models.py's rule), torch's native kernel for small calls.

generation  Greedy batch-1 generation with the cache (gcnn.runtime.optimize in fp32, bf16 and int8) of GCNN-8's shape
            (bench_fastpath.py's model and byte counting), against the bound = read bandwidth (over 1 GiB, the
            faster of torch.sum and an fp32 matrix-vector product, measured in the same rounds) / weight bytes read
            per token. int8: int8 weights for the convolutions and the softmax's matrices (fbgemm's dynamically
            quantized linear where PyTorch has it; else the softmax stays bf16).

Targets (issue 16): at B = 750, gcnn incremental >= 10x the 49-token re-run and faster than the LSTM per hypothesis;
batch-1 bf16 within 1.5x of its bound, int8 past the bf16 bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import torch

import common
import gcnn
from bench_fastpath import weight_bytes_per_token
from gcnn import runtime
from gcnn.baselines import LSTMConfig, LSTMLM
from models import closest_width

HISTORY = 49  # flashlight's ConvLM re-runs this many tokens of history for every new state
BEAMS = (1, 16, 128, 750)


def cpu_timed(fn: Callable[[], Any]) -> float:
    """CPU seconds this thread spends in ``fn`` (time.thread_time): with one torch thread all the work is on this
    thread, and time other processes take the CPU away is not counted (the machine is shared)."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def read_bandwidth_probe(num_bytes: int) -> tuple[Callable[[], None], list[float]]:
    """A function that reads ``num_bytes`` of fp32 once with each of two kernels (torch.sum, and a matrix-vector
    product: what a decoding step does) and records the faster one's bytes per CPU second: the stricter bound."""
    buffer = torch.ones(num_bytes // 4)
    matrix, vector = buffer.view(-1, 4096), torch.ones(1, 4096)
    samples: list[float] = []

    def run() -> None:
        best = min(cpu_timed(buffer.sum), cpu_timed(lambda: torch.nn.functional.linear(vector, matrix)))
        samples.append(buffer.numel() * 4 / best)

    return run, samples


def decode_rate(model, prompt, new_tokens: int) -> float:
    """Greedy decoding with the cache after ``prompt``: new tokens per CPU second, the prompt not counted."""
    cache = model.new_cache(1)
    token = int(model.next_token_log_probs(prompt, positions=[-1], cache=cache)[0, 0].argmax())
    start = time.thread_time()
    for _ in range(new_tokens):
        token = int(model.next_token_log_probs(torch.tensor([[token]]), cache=cache)[0, 0].argmax())
    return new_tokens / (time.thread_time() - start)


# ------------------------------------------------------------------------------------------------ beam step
def small_gcnn(vocab: int, smoke: bool) -> gcnn.LanguageModel:
    if smoke:
        return gcnn.build_model("gcnn-tiny", vocab_size=vocab, adaptive_cutoffs=(20, 60))
    return gcnn.build_model(
        "gcnn-small", vocab_size=vocab, dropout=0.0,
        blocks=(gcnn.Block(layers=((4, 256),), residual=False), gcnn.Block(layers=((4, 256),), repeat=5)),
    )


def lstm_of_width(vocab: int, width: int, cutoffs: tuple[int, ...]) -> LSTMLM:
    return LSTMLM(LSTMConfig(vocab, embed_dim=width, hidden_dim=width, num_layers=2, dropout=0.0,
                             adaptive_cutoffs=cutoffs))


def matching_lstm(vocab: int, target: int, cutoffs: tuple[int, ...]) -> LSTMLM:
    """The 2-layer LSTM whose total parameter count is closest to ``target`` (benchmarks/models.py's rule)."""
    return lstm_of_width(vocab, closest_width(lambda w: lstm_of_width(vocab, w, cutoffs), range(8, 2049, 8), target),
                         cutoffs)


def step_weights(model) -> int:
    """Weights one step reads besides the embedding row and the output layer (the recurrence, the convolutions)."""
    skip = {id(p) for p in model.embed.parameters()} | {id(p) for p in model.softmax.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def step_matched_lstm(vocab: int, target: int, cutoffs: tuple[int, ...]) -> LSTMLM:
    """The 2-layer LSTM whose step weights (recurrence) are closest to ``target`` (the GCNN's convolutions)."""
    def distance(width: int) -> int:
        with torch.device("meta"):
            return abs(step_weights(lstm_of_width(vocab, width, cutoffs)) - target)

    return lstm_of_width(vocab, min(range(8, 2049, 8), key=distance), cutoffs)


def beam_contenders(gcnn_model, lstm_model, wide_lstm, beam: int, rng: torch.Generator) -> dict[str, Callable[[], Any]]:
    """name -> a function doing one beam step for ``beam`` hypotheses (state prepared here, untimed)."""
    vocab = gcnn_model.vocab_size
    history = torch.randint(0, vocab, (beam, HISTORY), generator=rng)
    step = torch.randint(0, vocab, (beam, 1), generator=rng)
    out: dict[str, Callable[[], Any]] = {}
    for name, model in (("gcnn", gcnn_model), ("lstm", lstm_model), ("lstm same step weights", wide_lstm)):
        cache = model.new_cache(beam)
        with torch.inference_mode():
            model.hidden_states(history, cache)
        saved = (list(cache.buffers), cache.length) if name == "gcnn" else (cache.state, cache.length)

        def restore(cache=cache, saved=saved, name=name):
            if name == "gcnn":
                cache.buffers, cache.length = list(saved[0]), saved[1]
            else:
                cache.state, cache.length = saved

        def incremental(model=model, cache=cache, restore=restore):
            restore()
            return model.next_token_log_probs(step, cache=cache)

        def incremental_state(model=model, cache=cache, restore=restore):
            restore()
            return model.hidden_states(step, cache)

        out[f"{name} incremental"] = incremental
        out[f"{name} incremental, state only"] = incremental_state
        if model is wide_lstm:
            continue
        # the Scorer: parents cached (their histories advanced once, untimed), children new at every call
        scorer = gcnn.Scorer(model, start_id=0, eos_id=1, cache_mb=8192)
        states = [scorer.start()] * beam
        with torch.inference_mode():
            for t in range(HISTORY - 1 if name == "gcnn" else 8):
                states, _ = scorer.advance(states, history[:, t].tolist())
        tokens = step[:, 0].tolist()

        def advance(scorer=scorer, states=states, tokens=tokens):
            for s, t in zip(states, tokens):  # the children are computed anew each time
                child = scorer.child(s, t)
                entry = scorer._cache.pop(child.tokens, None)
                if entry is not None:
                    scorer.cache_bytes -= entry.nbytes
            return scorer.advance(states, tokens)

        out[f"{name} Scorer"] = advance
    out["gcnn re-run 49"] = lambda: gcnn_model.next_token_log_probs(
        torch.cat([history[:, 1:], step], 1), positions=[-1])
    out["gcnn re-run 49, state only"] = lambda: gcnn_model.hidden_states(torch.cat([history[:, 1:], step], 1))
    return out


def beam_step(gcnn_model, lstm_model, wide_lstm, beams, repeats) -> dict[str, Any]:
    rng = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for beam in beams:
            contenders = beam_contenders(gcnn_model, lstm_model, wide_lstm, beam, rng)
            seconds: dict[str, list[float]] = {name: [] for name in contenders}
            for name, fn in contenders.items():  # untimed warm-up
                fn()
            for _ in range(repeats):
                for name, fn in contenders.items():
                    seconds[name].append(cpu_timed(fn))
            out[str(beam)] = {
                name: {"seconds": common.median(s), "us_per_hypothesis": 1e6 * common.median(s) / beam,
                       "samples_seconds": [round(x, 6) for x in s]}
                for name, s in seconds.items()
            }
            print(f"B={beam}: " + ", ".join(f"{n} {1e3 * v['seconds']:.2f} ms" for n, v in out[str(beam)].items()),
                  file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------ batch 1
def batch_one(vocab: int, smoke: bool, repeats: int, new_tokens: int, bandwidth_bytes: int) -> dict[str, Any]:
    arch = "gcnn-tiny" if smoke else "gcnn-8"
    cutoffs = (20, 60) if smoke else (2000, 10000)
    torch.manual_seed(0)
    base = gcnn.build_model(arch, vocab_size=vocab, adaptive_cutoffs=cutoffs, dropout=0.0).eval()
    import copy

    models = {}
    for dtype in ("fp32", "bf16", "int8"):
        models[dtype] = runtime.optimize(copy.deepcopy(base), dtype)
    del base
    bytes_per_token = {
        "fp32": weight_bytes_per_token(models["fp32"], 4),
        "bf16": weight_bytes_per_token(models["bf16"], 2),
        "int8": weight_bytes_per_token(models["int8"], 2, int8_convolutions=True,
                                       int8_softmax=any(getattr(m, "_int8", None) is not None
                                                        for m in models["int8"].softmax.modules())),
    }
    prompt = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(1))
    probe, bandwidth = read_bandwidth_probe(bandwidth_bytes)
    seconds: dict[str, list[float]] = {d: [] for d in models}  # tokens per CPU second
    with torch.inference_mode():
        for model in models.values():
            decode_rate(model, prompt, 2)
        probe()
        bandwidth.clear()
        for _ in range(repeats):
            for dtype, model in models.items():
                seconds[dtype].append(decode_rate(model, prompt, new_tokens))
            probe()
    read = common.median(bandwidth)
    out: dict[str, Any] = {"arch": arch, "read_bandwidth_bytes_per_s": read, "samples_read_bandwidth": bandwidth,
                           "kernels": {"onednn_bf16_linear": runtime.onednn_bf16_linear_available(),
                                       "int8_weight_kernel": runtime.int8_linear_available(),
                                       "int8_dynamic_kernel": runtime.int8_activation_kernel_available()},
                           "modes": {}}
    for dtype in models:
        rate = common.median(seconds[dtype])
        bound = read / bytes_per_token[dtype]["bytes"]
        out["modes"][dtype] = {"decode_tokens_per_s": rate, "weight_bytes_per_token": bytes_per_token[dtype]["bytes"],
                               "bound_tokens_per_s": bound, "bound_over_measured": bound / rate,
                               "samples_tokens_per_s": [round(x, 2) for x in seconds[dtype]]}
    out["int8_over_bf16_bound"] = out["modes"]["int8"]["decode_tokens_per_s"] / out["modes"]["bf16"]["bound_tokens_per_s"]
    return out


# ------------------------------------------------------------------------------------------------ report
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, repeats=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    common.check_positive(parser, args, "repeats", "new_tokens")
    if args.threads is None:
        args.threads = 1  # CPU time of the calling thread is the measure: one torch thread
    result = common.start(args)
    vocab = 200 if args.smoke else common.WIKITEXT2_VOCAB
    beams = (1, 4) if args.smoke else BEAMS
    torch.manual_seed(0)
    g = small_gcnn(vocab, args.smoke).eval()
    lstm = matching_lstm(vocab, g.num_parameters(), g.config.adaptive_cutoffs).eval()
    wide = step_matched_lstm(vocab, step_weights(g), g.config.adaptive_cutoffs).eval()
    runtime.optimize(g, "fp32")  # gcnn's inference kernels: a step is one matrix product over each window of k inputs
    steps = beam_step(g, lstm, wide, beams, args.repeats)
    gen = batch_one(vocab, args.smoke, args.repeats, 8 if args.smoke else args.new_tokens,
                    (16 << 20) if args.smoke else (1 << 30))

    big = steps[str(beams[-1])]
    speedup = big["gcnn re-run 49"]["seconds"] / big["gcnn incremental"]["seconds"]
    speedup_state = big["gcnn re-run 49, state only"]["seconds"] / big["gcnn incremental, state only"]["seconds"]
    scorer_speedup = big["gcnn re-run 49"]["seconds"] / big["gcnn Scorer"]["seconds"]
    vs_lstm = big["lstm incremental"]["seconds"] / big["gcnn incremental"]["seconds"]
    vs_lstm_scorer = big["lstm Scorer"]["seconds"] / big["gcnn Scorer"]["seconds"]
    vs_wide = big["lstm same step weights incremental"]["seconds"] / big["gcnn incremental"]["seconds"]
    vs_lstm_state = big["lstm incremental, state only"]["seconds"] / big["gcnn incremental, state only"]["seconds"]
    vs_wide_state = (big["lstm same step weights incremental, state only"]["seconds"]
                     / big["gcnn incremental, state only"]["seconds"])
    names = list(big)
    rows = [[b] + [f"{steps[str(b)][n]['us_per_hypothesis']:,.1f}" for n in names] for b in beams]
    gen_rows = [[d, f"{m['weight_bytes_per_token'] / 1e6:,.1f}", f"{m['bound_tokens_per_s']:,.1f}",
                 f"{m['decode_tokens_per_s']:,.1f}", f"{m['bound_over_measured']:.2f}x"]
                for d, m in gen["modes"].items()]
    result.update(
        title="Decoding speed: beam steps of B hypotheses, and batch-1 generation against the bandwidth bound",
        settings={"beams": list(beams), "history": HISTORY, "repeats": args.repeats, "vocab": vocab,
                  "new_tokens": args.new_tokens},
        models={"gcnn": {"description": g.config.describe(), "parameters": g.num_parameters(),
                         "receptive_field": g.receptive_field},
                "lstm": {"description": lstm.config.describe(), "parameters": lstm.num_parameters(),
                         "step_weights": step_weights(lstm)},
                "lstm same step weights": {"description": wide.config.describe(), "parameters": wide.num_parameters(),
                                           "step_weights": step_weights(wide)}},
        beam_step=steps,
        generation=gen,
        targets={
            "rerun_over_incremental_at_largest_beam": speedup,
            "rerun_over_incremental_state_only": speedup_state,
            "rerun_over_scorer": scorer_speedup,
            "lstm_over_gcnn_incremental": vs_lstm,
            "lstm_scorer_over_gcnn_scorer": vs_lstm_scorer,
            "lstm_over_gcnn_state_only": vs_lstm_state,
            "same_step_weights_lstm_over_gcnn_incremental": vs_wide,
            "same_step_weights_lstm_over_gcnn_state_only": vs_wide_state,
            "bf16_bound_over_measured": gen["modes"]["bf16"]["bound_over_measured"],
            "int8_over_bf16_bound": gen["int8_over_bf16_bound"],
        },
        table_markdown=(
            "**Beam step**: microseconds per hypothesis to advance B hypotheses by one token (median of "
            f"{args.repeats} rounds)\n\n" + common.markdown_table(["B"] + names, rows)
            + "\n\n**Batch-1 generation** (" + gen["arch"] + f", read bandwidth "
            f"{gen['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s)\n\n"
            + common.markdown_table(["weights", "weight MB/token", "bound tokens/s", "decode tokens/s",
                                     "bound / measured"], gen_rows)
        ),
        notes=[
            f"GCNN {g.config.describe()} ({g.num_parameters():,} parameters, {step_weights(g):,} of them in the "
            f"convolutions, receptive field {g.receptive_field}); LSTM {lstm.config.describe()} "
            f"({lstm.num_parameters():,} parameters, the closest total; {step_weights(lstm):,} in the recurrence); "
            f"'lstm same step weights': {wide.config.describe()} ({step_weights(wide):,} recurrent weights, as many "
            f"as the GCNN's convolutions; {wide.num_parameters():,} parameters); vocabulary {vocab:,}, adaptive "
            "softmax; random weights; fp32; every contender but 'state only' computes the full next-token "
            "log-distribution of each hypothesis.",
            f"At B = {beams[-1]}: the 49-token re-run takes {speedup:.1f}x the time of gcnn's incremental step "
            f"({speedup_state:.1f}x state only, {scorer_speedup:.1f}x through the Scorer; target >= 10x); the LSTM's "
            f"step takes {vs_lstm:.2f}x gcnn's ({vs_lstm_scorer:.2f}x through the Scorer, {vs_lstm_state:.2f}x state "
            f"only; target > 1); the LSTM with as many step weights as the GCNN's convolutions takes {vs_wide:.2f}x "
            f"({vs_wide_state:.2f}x state only).",
            f"Batch 1: bf16 is {gen['modes']['bf16']['bound_over_measured']:.2f}x below its bound (target within "
            f"1.5x); int8 reaches {gen['int8_over_bf16_bound']:.2f}x the bf16 bound (target > 1). Kernels: "
            "gcnn.runtime's (oneDNN packed bf16 linear for the convolutions and the softmax "
            f"{gen['kernels']['onednn_bf16_linear']}, fbgemm dynamic int8 {gen['kernels']['int8_dynamic_kernel']}, "
            f"int8-weight kernel {gen['kernels']['int8_weight_kernel']}).",
            "Times are CPU seconds of the one torch thread (time.thread_time), so that the time other jobs on this "
            "shared 2-core machine took is not counted; cache and memory-bandwidth sharing still are. Ratios are of "
            "contenders timed side by side in the same rounds.",
        ],
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for name in names:
        left.plot(list(beams), [steps[str(b)][name]["us_per_hypothesis"] for b in beams], marker="o", label=name,
                  linestyle="--" if "state only" in name else "-")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("hypotheses B")
    left.set_ylabel("µs per hypothesis per step")
    left.set_title("Beam step")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    modes = list(gen["modes"])
    xs = range(len(modes))
    right.bar([x - 0.2 for x in xs], [gen["modes"][m]["bound_tokens_per_s"] for m in modes], 0.4, label="bound")
    right.bar([x + 0.2 for x in xs], [gen["modes"][m]["decode_tokens_per_s"] for m in modes], 0.4, label="measured")
    right.set_xticks(list(xs), modes)
    right.set_ylabel("tokens/s")
    right.set_title(f"Batch-1 generation ({gen['arch']})")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    common.write_report("decoding" + ("-smoke" if args.smoke else ""), result, fig, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
