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


# ------------------------------------------------------------------------------- bounded waits (fast, one process)
def test_a_process_whose_peers_never_join_stops_within_dist_timeout(monkeypatch):
    import socket
    import time

    import pytest
    import torch.distributed as dist

    from gcnn.train import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    start = time.monotonic()
    with pytest.raises(distributed.PeerLostError) as err:
        distributed.setup("cpu", timeout=1.5)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert message.startswith("rank 0 of 2 on host ")
    assert f"did not all join the process group at 127.0.0.1:{port} within train.dist_timeout = 1.5 s" in message
    assert not dist.is_initialized()


def test_dist_timeout_must_be_positive():
    import pytest

    from gcnn.errors import ConfigError

    with pytest.raises(ConfigError, match="train.dist_timeout must be a number of seconds > 0"):
        build_config(sets=["dist_timeout=0"], flags={"data": "d", "out": "o", "max_updates": 1}).validate()
    assert build_config(sets=["dist_timeout=20"], flags={"data": "d", "out": "o", "max_updates": 1}).dist_timeout == 20


def test_backend_errors_are_recognised_and_shortened():
    from gcnn.train.distributed import lost_peer, restart_advice, short_cause

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error [10.1.1.2]:3: Connection "
                        "reset by peer. This is typically caused by a remote worker hanging. GLHF!")
    assert lost_peer(gloo) and not lost_peer(ValueError("connection")) and not lost_peer(RuntimeError("shape"))
    assert short_cause(gloo) == "Read error [10.1.1.2]:3: Connection reset by peer"
    several = {"GROUP_WORLD_SIZE": "2", "TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in restart_advice(several)
    assert restart_advice(dict(several, TORCHELASTIC_USE_AGENT_STORE="False")) is None  # the variable is set
    assert restart_advice(dict(several, GROUP_WORLD_SIZE="1")) is None  # one node
    assert restart_advice(dict(several, TORCHELASTIC_MAX_RESTARTS="0")) is None
