"""A sentence-level corpus of about a million tokens from WikiText-2, and the sentence recipe on it.

    python benchmarks/wikitext2_sentences.py                      # build, prepare, train configs/sentences-cpu.toml
    python benchmarks/wikitext2_sentences.py --minutes 10         # a short budget (the report says so)
    python benchmarks/wikitext2_sentences.py --build-only         # only the corpus and the prepared folder

WikiText-2's lines (../shared/data/wikitext-2, ``--corpus``) are split into sentences: a paragraph's tokens up to and
including each ``.``, ``?`` or ``!`` token (WikiText is tokenized: marks are tokens of their own); section headings
(`` = Title = ``) and blank lines are dropped. The first sentences of the training split up to ``--train-tokens``
(default 1,000,000 words) make the training file; the validation and test splits are used whole. The files
(``RUNS/corpus/{train,valid,test}.txt``, one sentence per line) are prepared with ``gcnn prepare --format sentences
--max-size 10000``: a 10,000-token vocabulary (specials included), each sentence ``<s> ... </s>`` and independent of
the others. Then ``gcnn train --config configs/sentences-cpu.toml`` (early stopping on validation) and ``gcnn eval
--split test`` on the best checkpoint; the report goes to ``benchmarks/results/DATE-quality-sentences.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator

import common

RUNS = common.REPO / "runs" / "sentences"
RECIPE = common.REPO / "configs" / "sentences-cpu.toml"
ENDS = {".", "?", "!"}


def sentences(lines: Iterable[str]) -> Iterator[list[str]]:
    """The sentences of WikiText lines: token lists ending at each '.', '?' or '!' token (a paragraph's trailing
    words without one make a last sentence); headings and blank lines give none."""
    for line in lines:
        words = line.split()
        if not words or (words[0] == "=" and words[-1] == "="):
            continue
        current: list[str] = []
        for word in words:
            current.append(word)
            if word in ENDS:
                yield current
                current = []
        if current:
            yield current


def write_split(source: Path, target: Path, limit: int | None = None) -> dict[str, int]:
    """Write the sentences of ``source`` one per line into ``target`` (the first ones up to ``limit`` words)."""
    count = words = 0
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as out:
        for sentence in sentences(src):
            if limit is not None and words + len(sentence) > limit:
                break
            out.write(" ".join(sentence) + "\n")
            count += 1
            words += len(sentence)
    return {"sentences": count, "words": words}


def build(args: argparse.Namespace) -> tuple[Path, dict[str, dict[str, int]]]:
    corpus, data = args.runs / "corpus", args.runs / "data"
    stats_file = args.runs / "corpus-stats.json"
    if (data / "manifest.json").is_file() and stats_file.is_file() and not args.force:
        return data, json.loads(stats_file.read_text())
    if not args.corpus.is_dir():
        sys.exit(f"wikitext2_sentences: WikiText-2 not found at {args.corpus} (give --corpus); nothing was run")
    corpus.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in ("train", "valid", "test"):
        limit = args.train_tokens if split == "train" else None
        stats[split] = write_split(args.corpus / f"wiki.{split}.tokens", corpus / f"{split}.txt", limit)
    command = [sys.executable, "-m", "gcnn", "prepare", "--format", "sentences", "--train", str(corpus / "train.txt"),
               "--valid", str(corpus / "valid.txt"), "--test", str(corpus / "test.txt"), "--max-size",
               str(args.vocab_size), "--out", str(data), "--quiet", "--force"]
    subprocess.run(command, check=True)
    stats_file.write_text(json.dumps(stats, indent=2) + "\n")
    return data, stats


def train_and_test(args: argparse.Namespace, data: Path) -> Path:
    run = args.runs / "run"
    if run.exists():
        shutil.rmtree(run)
    command = [sys.executable, "-m", "gcnn", "train", "--data", str(data), "--config", str(args.recipe), "--out",
               str(run), "--quiet", "--set", f"threads={args.threads}"]
    if args.minutes:
        command += ["--max-minutes", str(args.minutes)]
    for item in args.set:
        command += ["--set", item]
    print(" ".join(command[2:]), file=sys.stderr, flush=True)
    with open(args.runs / "train.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    out = subprocess.run([sys.executable, "-m", "gcnn", "eval", str(run), "--data", str(data), "--split", "test",
                          "--json"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    (run / "test_eval.json").write_text(out.stdout)
    return run


def report(args: argparse.Namespace, run: Path, stats: dict, head: dict) -> Path:
    from bench_quality import curve_plot, summarize

    summary = summarize(run)
    info = json.loads((run / "run.json").read_text())
    test = json.loads((run / "test_eval.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_ppl = [(r["time"] / 60, r["ppl"]) for r in records if r.get("kind") == "train"]
    table = common.markdown_table(
        ["corpus", "train sentences / words", "vocabulary", "parameters", "epochs", "training minutes", "stopped by",
         "best valid ppl", "test ppl"],
        [["WikiText-2 sentences", f"{stats['train']['sentences']:,} / {stats['train']['words']:,}",
          f"{info['data']['vocab_size']:,}", f"{info['parameters']:,}", f"{info['epochs']:.2f}",
          f"{info['train_seconds'] / 60:.1f}", info["stop_reason"], f"{info['best_valid_ppl']:.1f}",
          f"{test['perplexity']:.1f}"]])
    budget = info["train_config"]["max_minutes"]
    notes = [
        f"`configs/{args.recipe.name}` (run started {info['started']}) on WikiText-2 split into sentences (valid "
        f"{stats['valid']['sentences']:,} sentences, test {stats['test']['sentences']:,}), each scored as an "
        "independent sentence (`<s> ... </s>`, the `</s>` counted, `<s>` never predicted), with "
        f"{args.threads} torch thread{'s' if args.threads != 1 else ''} for {budget:g} minutes at most (training "
        "minutes leave out the validations). Test perplexity: `gcnn eval RUN --split test` on the best checkpoint "
        "by validation, read once.",
        f"Stopped by {info['stop_reason']}" + (f": {info['stop_detail']}" if info.get("stop_detail") else "") + ".",
    ]
    if info["stop_reason"] == "early_stop":
        notes.append(f"Early stopping ended the run after {info['train_seconds'] / 60:.1f} training minutes, inside the "
                     f"{budget:g}-minute cap: the budget did not bind, the recipe's stopping rule did.")
    elif budget < 60:
        notes.append(f"A short-budget figure ({budget:g} minutes; the recipe allows 60): the cap ended the run before "
                     "its stopping rule did, so this says what it reaches in this time, not at its end.")
    figure = curve_plot("Sentence-level WikiText-2: validation and training perplexity", [
        ("validation", summary["valid_curve_minutes_ppl"]), ("training (dropout on)", train_ppl)])
    result = dict(head, title="A sentence-level corpus of ~1M words: configs/sentences-cpu.toml", corpus=stats,
                  run=summary, test=test, stop_reason=info["stop_reason"], stop_detail=info.get("stop_detail"),
                  table_markdown=table, notes=notes)
    return common.write_report("quality-sentences", result, figure, args.out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=common.WIKITEXT2)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--train-tokens", type=int, default=1_000_000)
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=None, help="override the recipe's max_minutes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--report", action="store_true", help="only redraw the report from the finished run")
    parser.add_argument("--force", action="store_true", help="rebuild the corpus and the prepared folder")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    head = common.start(argparse.Namespace(threads=None, note=args.note, smoke=False))
    args.runs.mkdir(parents=True, exist_ok=True)
    data, stats = build(args)
    print(f"corpus: {json.dumps(stats)}; prepared: {data}", file=sys.stderr)
    if args.build_only:
        return
    run = args.runs / "run" if args.report else train_and_test(args, data)
    report(args, run, stats, head)


if __name__ == "__main__":
    main()
