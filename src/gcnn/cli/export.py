"""``gcnn export``: a run folder as a portable pretrained folder (and ONNX graphs)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a run folder's model as a portable pretrained folder with a model card (--onnx: and ONNX graphs)"
DESCRIPTION = """Write the model of RUN_DIR (a run folder written by `gcnn train`, a checkpoint, or another exported
folder) into OUT_DIR in the layout users know from Hugging Face:

  config.json, model.safetensors   the model (no code runs when they are loaded)
  vocab.json                       the vocabulary
  README.md                        model card: structure, training data, recipe, the validation perplexity
                                   recorded during training (from RUN_DIR/run.json, saying how it was measured),
                                   and the perplexity on --eval-data measured now as `gcnn eval` measures it
  SHA256SUMS                       checksums, checked when the folder is loaded (and by `sha256sum -c`)
  tokenizer.json, modeling_gcnn.py, tokenizer_config.json, special_tokens_map.json, generation_config.json
                                   the folder as a Hugging Face model (config.json carries transformers' keys):
                                   AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True) with
                                   pip install 'gcnn[hf]' (docs/interop.md)

--onnx also writes model.onnx (tokens -> next-token log-probabilities) and decoder_step.onnx (one incremental
decoding step with explicit state tensors), each with its .onnx.data weights; they need pip install 'gcnn[onnx]'.

OUT_DIR must be new, empty, or an earlier export (which is replaced whole); a run folder, prepared data or any
other files there are refused before anything is written. OUT_DIR loads with gcnn.load(OUT_DIR) and works wherever a
run folder does (gcnn eval, score, generate).

example:  gcnn export runs/shakespeare-demo models/shakespeare --onnx"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by `gcnn train` (or a pretrained folder)")
    p.add_argument("out", metavar="OUT_DIR", help="folder to write: new, empty, or an earlier export (replaced)")
    p.add_argument("--onnx", action="store_true", help="also export model.onnx and decoder_step.onnx")
    p.add_argument("--eval-data", metavar="PREPARED", help="measure perplexity on this prepared-data folder for the card")
    p.add_argument("--eval-split", default="test", choices=("train", "valid", "test"), help="its split (default: test)")


def run(args: argparse.Namespace) -> int:
    from gcnn.card import ModelCard
    from gcnn.errors import CheckpointError
    from gcnn.evaluate import evaluate_split
    from gcnn.io import check_export_destination, load, save_pretrained

    run_dir, out = Path(args.run), Path(args.out)
    if out.resolve() == run_dir.resolve():
        raise CheckpointError(f"OUT_DIR {out} is RUN_DIR itself: choose another folder")
    check_export_destination(out)  # before anything is computed
    if args.onnx:
        from gcnn.onnx_export import check_exporter

        check_exporter()
    model = load(run_dir)
    card = ModelCard.from_run(run_dir)
    if args.eval_data:
        result = evaluate_split(model, args.eval_data, args.eval_split)
        card.add_evaluation(
            f"{args.eval_split} split of `{args.eval_data}`, measured by `gcnn eval` ({result.mode} mode, "
            f"{result.tokens:,} tokens"
            + (f", context {result.context}, stride {result.stride}" if result.mode == "stream" else "") + ")",
            result.perplexity,
        )
        print(f"{args.eval_split} perplexity on {args.eval_data}: {result.perplexity:.2f}")
    write_onnx = None
    if args.onnx:
        from gcnn.onnx_export import export_onnx

        def write_onnx(folder: Path) -> None:
            export_onnx(model, folder)

    save_pretrained(model, out, card=card, write_extra=write_onnx)
    print(f"wrote {out} ({model.num_parameters():,} parameters, vocabulary "
          + (f"{len(model.vocab):,})" if model.vocab is not None else "none)"))
    return 0
