"""``gcnn score``: one JSON line of log-probabilities per input line (what KenLM's query gives n-gram users)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import BinaryIO, Iterator

from gcnn.cli.common import add_inference_arguments, load_model

HELP = "score each line of stdin (or --input) as a sentence: one JSON line each"
DESCRIPTION = """Score every input line as an independent sentence and write one JSON line per input line, in order:

  {"line": 1, "logprob": -23.1, "log10prob": -10.03, "tokens": 7, "oov": 0, "perplexity": 27.1}

logprob is the natural-log probability of the line's tokens and of the end-of-line token that follows them (tokens
counts both); oov counts words outside the vocabulary (scored as <unk>). Lines are split into tokens as the corpus was.
The line is predicted from <s> when the vocabulary has one (sentence corpora), else from <eos> (stream corpora: the
line is scored as if it followed the end of another line). --per-token adds "token_logprobs": [[token, logprob], ...].

--format kenlm prints what KenLM's `query` prints instead: per line, each token as `word=id ngram_length log10p`
(tab-separated; id 0 for words outside the vocabulary and <unk>, else gcnn's id + 1; ngram_length = the tokens the
prediction depends on, itself included), then `</s>=id n log10p` and `Total: <log10 probability> OOV: <count>`;
at the end `Perplexity including OOVs:`, `Perplexity excluding OOVs:`, `OOVs:` and `Tokens:` (</s> counted).
Input is read and scored in chunks, so it may be larger than memory.

example:  gcnn score runs/shakespeare-demo < sentences.txt > scores.jsonl"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", metavar="FILE", help="read this UTF-8 file instead of stdin")
    p.add_argument("--per-token", action="store_true", help="add each token's log-probability")
    p.add_argument("--format", choices=("jsonl", "kenlm"), default="jsonl",
                   help="jsonl (default): one JSON object a line; kenlm: what KenLM's query prints")
    add_inference_arguments(p)


def run(args: argparse.Namespace) -> int:
    from gcnn.errors import DataError
    from gcnn.evaluate import score_texts

    model = load_model(args, needs_vocab="gcnn score")
    vocab = model.vocab
    if args.input is not None:
        try:
            stream: BinaryIO = open(args.input, "rb")
        except OSError as exc:
            raise DataError(f"--input {args.input}: cannot read ({exc.strerror})") from None
        name = args.input
    else:
        stream, name = sys.stdin.buffer, "<stdin>"
    with stream:
        if args.format == "kenlm":
            from gcnn.kenlm import query_lines

            for line in query_lines(model, vocab, read_lines(stream, name), batch_tokens=args.batch_tokens, bf16=args.bf16):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return 0
        scores = score_texts(
            model,
            vocab,
            read_lines(stream, name),
            per_token=args.per_token,
            batch_tokens=args.batch_tokens,
            bf16=args.bf16,
        )
        for number, score in enumerate(scores, start=1):
            sys.stdout.write(json.dumps({"line": number, **score.to_dict()}, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


def read_lines(stream: BinaryIO, name: str | Path) -> Iterator[str]:
    """The lines of a binary stream as text, without line ends or a leading BOM; DataError naming a line that is not
    UTF-8."""
    from gcnn.errors import DataError

    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}: line {number}, byte {exc.start + 1}: not valid UTF-8") from None
        yield text.lstrip("\ufeff") if number == 1 else text
