"""``gcnn train``: train a model on a prepared-data folder into a run folder."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "train a model on a prepared-data folder (recipes in configs/*.toml; resumable; torchrun for DDP)"
DESCRIPTION = """\
Train a language model on a prepared-data folder (`gcnn prepare`) and write a run folder:
  config.json, model.safetensors   the best model so far by validation perplexity (gcnn.load_model reads it)
  vocab.json, run.json             the vocabulary; the config, data identity, best perplexity, counts, timings
  metrics.jsonl, learning_curve.png, tensorboard/ (if installed)
  checkpoints/update_N/            resume state: the last --set keep_last=N checkpoints and the best

Settings are layered: defaults < --config FILE.toml < --set key=value < the flags below. Keys are those of the
recipe's [train] table (--set train.lr=0.5, or just --set lr=0.5) and of its [model] table (--set model.dropout=0.2);
values are TOML (0.5, true, [2000, 10000], "text"). `gcnn train --list-keys` prints every key with its default.

examples:
  gcnn prepare --data shakespeare --out data/shakespeare
  gcnn train --data data/shakespeare --config configs/shakespeare-cpu.toml --out runs/shakespeare
  gcnn train --data data/wikitext-2 --arch gcnn-small --out runs/w2 --max-minutes 30 --set lr=0.5
  gcnn train --out runs/w2 --resume --max-minutes 30          # continue a stopped run where it stopped
  torchrun --nproc_per_node 8 -m gcnn train --data data/wikitext-103 --config configs/wikitext103-paper.toml \\
      --out runs/wt103                                         # DistributedDataParallel on 8 GPUs

Several machines: the same torchrun command on each (--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST0:PORT), the
run folder on a file system every node sees. A lost process stops the others within --set dist_timeout=SECONDS
(default 600) with a message naming the last checkpoint; with torchrun --max-restarts (and
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) restarted workers continue from the newest checkpoint by themselves.

Ctrl-C, SIGTERM or SIGHUP (a closed terminal) finishes the current update, saves a checkpoint and exits
(130 / 143 / 129); resume with --resume."""

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to train")
    what.add_argument("--data", metavar="PREPARED", help="prepared-data folder written by `gcnn prepare`")
    what.add_argument("--arch", metavar="NAME", help="architecture name (`gcnn archs` lists them); sets model.arch")
    what.add_argument("--out", metavar="RUN_DIR", help="run folder to write (or to continue with --resume)")
    what.add_argument("--config", dest="recipe", metavar="FILE.toml|NAME",
                      help="recipe with [model] and [train] tables: a file, or the name of a shipped recipe (configs/)")
    what.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                      help="override one key, e.g. train.lr=0.5 or model.dropout=0.2 (repeatable)")
    what.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its newest checkpoint (its saved config is the base; "
                           "the flags may extend the run but not change the model, batch, context or seed)")

    bounds = p.add_argument_group("how long (the first bound reached ends the run)")
    bounds.add_argument("--max-updates", type=int, metavar="N", help="stop after N updates in all (resumes included)")
    bounds.add_argument("--max-epochs", type=int, metavar="N", help="stop after N passes over the training split")
    bounds.add_argument("--max-minutes", type=float, metavar="M", help="stop after M minutes of this invocation")

    how = p.add_argument_group("common settings (also keys of --set)")
    how.add_argument("--optimizer", choices=("nesterov", "sgd", "adamw"), help="default: nesterov (the paper's)")
    how.add_argument("--lr", type=float, help="peak learning rate (default: 1.0)")
    how.add_argument("--batch-size", type=int, metavar="N", help="sequences per update, all processes together")
    how.add_argument("--context", type=int, metavar="T", help="tokens per training sequence (default: 128)")
    how.add_argument("--accum-steps", type=int, metavar="N", help="micro-batches accumulated per update (default: 1)")
    how.add_argument("--valid-every", type=int, metavar="N", help="validate every N updates (epoch ends always)")
    how.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp32 (default), bf16 autocast, or fp16 "
                     "autocast with a gradient scaler (CUDA only)")
    how.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    how.add_argument("--seed", type=int, help="seed of the initialisation, data order and dropout (default: 1)")

    out = p.add_argument_group("output")
    out.add_argument("--quiet", action="store_true", help="no progress bar: a log line every log_every updates")
    out.add_argument("--list-keys", action="store_true", help="print every [train] key with its default and exit")


def _load_base(run_dir: str):
    """The run's saved config, to resume it; under torchrun a process other than rank 0 that cannot read it is on
    a node that does not see the run folder."""
    from gcnn.errors import CheckpointError
    from gcnn.train import load_run_config

    try:
        return load_run_config(run_dir)
    except CheckpointError as exc:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import socket

            raise CheckpointError(
                f"{exc} (rank {os.environ.get('RANK', '?')} on host {socket.gethostname()}): every node must see the "
                f"run folder {run_dir} at the same path, on a file system they share (NFS, Lustre, ...); the other "
                "processes stop when train.dist_timeout runs out"
            ) from None
        raise


FLAG_KEYS = ("data", "arch", "out", "max_updates", "max_epochs", "max_minutes", "optimizer", "lr", "batch_size",
             "context", "accum_steps", "valid_every", "precision", "device", "seed")


def run(args: argparse.Namespace) -> int:
    from gcnn.errors import ConfigError, option
    from gcnn.train import TrainConfig, build_config, load_run_config, train

    if args.list_keys:
        for key, value in TrainConfig().to_dict().items():
            print(f"{key} = {value!r}")
        return 0
    if not args.out:
        raise ConfigError(f"{option('out')} RUN_DIR is required")
    base = _load_base(args.out) if args.resume else None
    flags = {key: getattr(args, key) for key in FLAG_KEYS}
    config = build_config(recipe=args.recipe, sets=args.sets, flags=flags, base=base)
    from gcnn.train.distributed import restart_advice, restart_count

    if os.environ.get("RANK", "0") == "0" and not restart_count() and (advice := restart_advice()):
        print(f"gcnn train: warning: {advice}", file=sys.stderr)
    # under torchrun --max-restarts, workers that torchrun restarted continue from the newest checkpoint
    elastic = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0
    resume: bool | str = args.resume or ("auto" if elastic else False)
    result = train(config, resume=resume, quiet=args.quiet)
    code = EXIT_CODES.get(result.stop_reason, 0)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return code
    print(result.summary())
    if code:
        print(f"gcnn train: stopped by {result.stop_reason}; a checkpoint is saved. Continue with: "
              f"gcnn train --out {args.out} --resume", file=sys.stderr)
    return code
