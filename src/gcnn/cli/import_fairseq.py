"""``gcnn import-fairseq``: convert a fairseq ``fconv_lm`` checkpoint into a gcnn pretrained folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "convert a fairseq fconv_lm checkpoint (the paper authors' implementation) into a gcnn model folder"
DESCRIPTION = """Convert a GCNN language model trained with fairseq's fconv_lm (e.g. fconv_lm_dauphin_wikitext103,
fconv_lm_dauphin_gbw or a custom layer spec) into OUT_DIR: config.json,
model.safetensors, vocab.json, a README.md model card and SHA256SUMS. The converted model gives the same
log-probabilities as fairseq's (see docs/interop.md for what is mapped and what was checked).

CHECKPOINT.pt is read with torch.load(weights_only=True): only tensors, plain containers, argparse.Namespace,
numpy scalars and placeholders for the training meters of fairseq 0.5-0.9 (fairseq.meters.AverageMeter, TimeMeter,
StopwatchMeter) are unpickled, so no code from the file runs and fairseq need not be installed. A stale
_linearized_weight entry is dropped, as fairseq does.

DICT.txt is the vocabulary, in either format (told apart by the first line):
  fairseq dict.txt / wav2letter .dict   "word count" lines; <s> <pad> </s> <unk> are ids 0-3 before them
  wav2letter .vocab                     "<fairseq_style>", "<pad>", "</s>", "<unk>", then one word per line

examples:  gcnn import-fairseq wiki103.pt dict.txt models/gcnn-14-wiki103
           gcnn import-fairseq lm_librispeech_convlm_word_14B.pt lm_librispeech_convlm_word_14B.vocab models/ls-14b"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT.pt", help="fairseq checkpoint of an fconv_lm model")
    p.add_argument("dictionary", metavar="DICT.txt",
                   help="the model's vocabulary: fairseq dict.txt, or wav2letter's .vocab / .dict")
    p.add_argument("out", metavar="OUT_DIR", help="folder to write: new, empty, or an earlier export (replaced)")


def run(args: argparse.Namespace) -> int:
    from gcnn.fairseq import import_fairseq, model_card
    from gcnn.io import save_pretrained

    imported = import_fairseq(args.checkpoint, args.dictionary)
    out = save_pretrained(imported.model, Path(args.out), imported.vocab, card=model_card(imported, args.checkpoint))
    model = imported.model
    print(
        f"wrote {out}: {imported.arch}, {len(imported.layers)} convolution layers -> {model.config.describe()}; "
        f"{model.num_parameters():,} parameters, vocabulary {len(imported.vocab):,}, "
        f"receptive field {model.receptive_field}"
    )
    return 0
