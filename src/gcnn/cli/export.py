"""``gcnn export``: a run folder as a portable pretrained folder (and ONNX graphs)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a run folder's model as a portable pretrained folder with a model card (--onnx: and ONNX graphs)"
DESCRIPTION = """Write the model of RUN_DIR (a run folder written by `gcnn train`, or any model folder with a
vocabulary) into OUT_DIR in the layout users know from Hugging Face:

  config.json, model.safetensors   the model (no code runs when they are loaded)
  vocab.json                       the vocabulary
  README.md                        model card: structure, training data, recipe, best validation perplexity
                                   (from RUN_DIR/run.json; "not measured" where there is none), and the
                                   perplexity on --eval-data, measured now
  SHA256SUMS                       checksums, checked when the folder is loaded (and by `sha256sum -c`)

--onnx also writes model.onnx (tokens -> next-token log-probabilities) and decoder_step.onnx (one incremental
decoding step with explicit state tensors), each with its .onnx.data weights; they need pip install 'gcnn[onnx]'.

OUT_DIR loads with gcnn.hub.load_pretrained(OUT_DIR) and works wherever a run folder does (gcnn eval, score, generate).

example:  gcnn export runs/shakespeare-demo models/shakespeare --onnx"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by `gcnn train` (or a pretrained folder)")
    p.add_argument("out", metavar="OUT_DIR", help="folder to write (created; files of the same names are replaced)")
    p.add_argument("--onnx", action="store_true", help="also export model.onnx and decoder_step.onnx")
    p.add_argument("--eval-data", metavar="PREPARED", help="measure perplexity on this prepared-data folder for the card")
    p.add_argument("--eval-split", default="test", choices=("train", "valid", "test"), help="its split (default: test)")


def run(args: argparse.Namespace) -> int:
    from gcnn.errors import CheckpointError
    from gcnn.hub import ModelCard, load_pretrained, save_pretrained, write_checksums

    run_dir, out = Path(args.run), Path(args.out)
    if out.resolve() == run_dir.resolve():
        raise CheckpointError(f"OUT_DIR {out} is RUN_DIR itself: choose another folder")
    if args.onnx:
        from gcnn.onnx_export import check_exporter

        check_exporter()  # before anything is written
    model, vocab = load_pretrained(run_dir)
    card = ModelCard.from_run(run_dir)
    if args.eval_data:
        ppl = card.measure_perplexity(model, vocab, args.eval_data, args.eval_split)
        print(f"{args.eval_split} perplexity on {args.eval_data}: {ppl:.2f}")
    save_pretrained(model, out, vocab, card=card)
    print(f"wrote {out} ({model.num_parameters():,} parameters, vocabulary {len(vocab):,})")
    if args.onnx:
        from gcnn.onnx_export import export_onnx

        files = export_onnx(model, out)
        write_checksums(out)
        print("wrote " + ", ".join(str(path) for path in files.values()))
    return 0
