"""DistributedDataParallel: `torchrun --nproc_per_node 2 -m gcnn train` with gloo on the CPU computes what one
process computes over the same global batch."""

import math
import random
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from gcnn.data import find_corpus, prepare
from gcnn.train import build_config, train
from gcnn.train import checkpoint as ckpt
from gcnn.train.monitor import read_metrics


def sentence_corpus(folder: Path) -> Path:
    """Sentences of very different lengths, so the two processes' halves of a batch hold different token counts."""
    rng = random.Random(0)
    files = {}
    for split, lines in (("train", 200), ("valid", 20), ("test", 20)):
        path = folder / f"{split}.txt"
        path.write_text("".join(
            " ".join(f"w{rng.randrange(40)}" for _ in range(rng.choice([2, 3, 15, 30]))) + "\n" for _ in range(lines)
        ))
        files[split] = [path]
    corpus = find_corpus(train=files["train"], valid=files["valid"], test=files["test"], format="sentences")
    return prepare(corpus, folder / "prepared").path


def test_two_gloo_processes_equal_one_process(tmp_path):
    data = sentence_corpus(tmp_path)
    sets = ["log_every=1", "tensorboard=false", "optimizer=nesterov", "lr=0.5", "momentum=0.9", "model.dropout=0.0"]
    flags = {"arch": "gcnn-tiny", "batch_size": 8, "accum_steps": 2, "context": 12, "max_updates": 3}
    two = tmp_path / "two"
    cli_flags = [arg for key, value in flags.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gcnn",
         "train", "--data", str(data), "--out", str(two), "--device", "cpu", "--quiet", *cli_flags,
         *[arg for item in sets for arg in ("--set", item)]],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("3 updates") == 1  # only the first process reports
    assert ckpt.load_latest(two).state["world_size"] == 2

    one = tmp_path / "one"
    train(build_config(sets=sets, flags=dict(flags, data=str(data), out=str(one))), silent=True)

    losses = [[r["loss"] for r in read_metrics(run) if r["kind"] == "train"] for run in (one, two)]
    assert len(losses[0]) == 3 and losses[0][0] != losses[0][-1]  # it trained
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(*losses))
    a = load_file(str(ckpt.list_checkpoints(one)[-1] / "model.safetensors"))
    b = load_file(str(ckpt.list_checkpoints(two)[-1] / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
