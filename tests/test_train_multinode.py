"""Two hosts on one machine: `torchrun --nnodes 2 --rdzv-backend c10d` with one node in each of two network
namespaces joined by a veth pair (gloo over that link), against one process over the same global batches; a node's
worker SIGKILLed mid-run (with and without torchrun restarts); resuming with another world size; a node that cannot
see the run folder. Needs root (CAP_NET_ADMIN) for `ip netns`; skipped with a message elsewhere.

Run with `python3 -m pytest -q -m slow tests/test_train_multinode.py` (docs/training.md quotes its timings).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gcnn.cli import main
from gcnn.data import find_corpus, prepare
from gcnn.train import build_config, train
from gcnn.train import checkpoint as ckpt
from gcnn.train.monitor import read_metrics

pytestmark = pytest.mark.slow

UPDATES = 16
SETS = ["log_every=1", "tensorboard=false", "optimizer=nesterov", "lr=0.5", "momentum=0.9", "model.dropout=0.0",
        "threads=1", "valid_every=2", "valid_max_tokens=64", "keep_last=3", "dist_timeout=30"]
FLAGS = {"arch": "gcnn-tiny", "batch_size": 8, "accum_steps": 2, "context": 12, "max_updates": UPDATES}
PORT = 29400  # inside node A's namespace: nothing else listens there
_names = itertools.count()


# --------------------------------------------------------------------------------------------- two "hosts"
class Nodes:
    """Two network namespaces ``a`` and ``b`` joined by a veth pair: node A at 10.X.Y.1, node B at 10.X.Y.2."""

    def __init__(self, tag: str) -> None:
        self.ns = {"a": f"{tag}a", "b": f"{tag}b"}
        self.dev = {"a": f"{tag}va", "b": f"{tag}vb"}
        n = next(_names)
        self.addr = {"a": f"10.{100 + os.getpid() % 100}.{n % 250}.1", "b": f"10.{100 + os.getpid() % 100}.{n % 250}.2"}
        self.procs: list[subprocess.Popen] = []

    def create(self) -> None:
        for node in "ab":
            _ip("netns", "add", self.ns[node])
        _ip("link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"])
        for node in "ab":
            _ip("link", "set", self.dev[node], "netns", self.ns[node])
            _ip("-n", self.ns[node], "addr", "add", f"{self.addr[node]}/24", "dev", self.dev[node])
            _ip("-n", self.ns[node], "link", "set", "lo", "up")
            _ip("-n", self.ns[node], "link", "set", self.dev[node], "up")

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces, then delete them (the veth pair goes with them)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for node in "ab":
            for pid in self.pids(node):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", self.ns[node]], capture_output=True)

    def pids(self, node: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[node]], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def workers(self, node: str) -> list[int]:
        """The training processes of ``node`` (not its torchrun agent)."""
        found = []
        for pid in self.pids(node):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"gcnn" in cmd and b"train" in cmd and b"torch.distributed.run" not in cmd:
                found.append(pid)
        return found

    def torchrun(self, node: str, args: list[str], *, restarts: int = 0, wrap: list[str] | None = None,
                 log: Path) -> subprocess.Popen:
        """``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` on ``node``, rendezvous on node A."""
        env = dict(os.environ, GLOO_SOCKET_IFNAME=self.dev[node], OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if restarts:  # see docs/training.md: restarted workers must not read the previous attempt's addresses
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        cmd = [
            "ip", "netns", "exec", self.ns[node], *(wrap or []),
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{self.addr['a']}:{PORT}", "--rdzv-id", self.ns["a"],
            "--rdzv-conf", f"is_host={int(node == 'a')}", "--local-addr", self.addr[node],
            "--max-restarts", str(restarts), "--monitor-interval", "0.2",
            "-m", "gcnn", "train", *args,
        ]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run_both(self, args: list[str], tmp: Path, *, restarts: int = 0, wrap_b: list[str] | None = None,
                 during=None, timeout: float = 240) -> dict[str, tuple[int, str]]:
        """Both nodes, to the end; ``during(self)`` runs while they train. Returns {node: (exit code, log)}."""
        attempt = next(_names)
        logs = {node: tmp / f"attempt{attempt}-node-{node}.log" for node in "ab"}
        procs = {node: self.torchrun(node, args, restarts=restarts, log=logs[node],
                                     wrap=wrap_b if node == "b" else None) for node in "ab"}
        if during is not None:
            during(self)
        deadline = time.monotonic() + timeout
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return {node: (proc.returncode, logs[node].read_text()) for node, proc in procs.items()}


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@pytest.fixture
def nodes():
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to build two network namespaces")
    pair = Nodes(f"g{os.getpid() % 100000}n{next(_names)}")
    try:
        pair.create()
    except RuntimeError as exc:
        pair.destroy()
        pytest.skip(f"cannot build network namespaces here (needs root / CAP_NET_ADMIN): {exc}")
    try:
        yield pair
    finally:
        pair.destroy()
        assert not any(Path("/run/netns", pair.ns[n]).exists() for n in "ab"), "a namespace was left behind"


# --------------------------------------------------------------------------------------------- data and runs
def make_corpus(folder: Path, mode: str) -> Path:
    """Sentences of very different lengths (sentence mode), or running text (stream mode)."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    files = {}
    for split, lines in (("train", 200), ("valid", 20), ("test", 20)):
        path = folder / f"{split}.txt"
        path.write_text("".join(
            " ".join(f"w{rng.randrange(40)}" for _ in range(rng.choice([2, 3, 15, 30]))) + "\n" for _ in range(lines)
        ))
        files[split] = [path]
    fmt = "sentences" if mode == "sentence" else "plain"
    corpus = find_corpus(train=files["train"], valid=files["valid"], test=files["test"], format=fmt)
    return prepare(corpus, folder / "prepared").path


def cli_args(data: Path, out: Path, **overrides) -> list[str]:
    flags = dict(FLAGS, **overrides)
    args = ["--data", str(data), "--out", str(out), "--device", "cpu", "--quiet"]
    args += [arg for key, value in flags.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    return args + [arg for item in SETS for arg in ("--set", item)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {mode: make_corpus(root / mode, mode) for mode in ("sentence", "stream")}


@pytest.fixture(scope="module")
def reference(corpora, tmp_path_factory):
    """One process, UPDATES updates, per mode: the run every multi-node run must equal."""
    runs = {}
    for mode, data in corpora.items():
        out = tmp_path_factory.mktemp(f"reference-{mode}")
        train(build_config(sets=SETS, flags=dict(FLAGS, data=str(data), out=str(out))), silent=True)
        runs[mode] = out
    return runs


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if r["kind"] == "train"]


def final_weights(run: Path) -> dict:
    return load_file(str(ckpt.list_checkpoints(run)[-1] / "model.safetensors"))


def assert_same_run(run: Path, ref: Path) -> float:
    """Same losses at every update and the same final weights as ``ref``; returns the largest weight difference."""
    got, want = losses(run), losses(ref)
    assert len(want) == UPDATES and want[0] != want[-1]  # it trained
    assert len(got) == UPDATES, f"{len(got)} logged updates in {run}"
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(got, want)), (got, want)
    a, b = final_weights(run), final_weights(ref)
    assert ckpt.load_latest(run).state["update"] == UPDATES
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    return diff


def report(name: str, **values) -> None:
    """Measured numbers for docs/training.md (shown with pytest -s, appended to $GCNN_MULTINODE_REPORT if set)."""
    line = json.dumps({"test": name, **values})
    print(line)
    if os.environ.get("GCNN_MULTINODE_REPORT"):
        with open(os.environ["GCNN_MULTINODE_REPORT"], "a") as out:
            out.write(line + "\n")


def kill_worker_after(node: str, update: int, run: Path, killed: list):
    """A ``during`` callback: SIGKILL ``node``'s worker once the checkpoint of ``update`` exists."""

    def during(pair: Nodes) -> None:
        target = run / ckpt.CHECKPOINTS_DIR / f"{ckpt.PREFIX}{update:08d}"
        deadline = time.monotonic() + 180
        while not target.is_dir():
            assert time.monotonic() < deadline, f"{target} never appeared"
            time.sleep(0.02)
        workers = pair.workers(node)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        killed.append((time.monotonic(), max(int(p.name[len(ckpt.PREFIX):]) for p in ckpt.list_checkpoints(run))))

    return during


# --------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("mode", ["sentence", "stream"])
def test_two_nodes_equal_one_process(nodes, corpora, reference, mode, tmp_path):
    run = tmp_path / "run"
    start = time.monotonic()
    result = nodes.run_both(cli_args(corpora[mode], run), tmp_path)
    seconds = time.monotonic() - start
    for node, (code, log) in result.items():
        assert code == 0, f"node {node}:\n{log[-3000:]}"
    assert f"{UPDATES} updates" in result["a"][1] and f"{UPDATES} updates" not in result["b"][1]  # rank 0 reports
    state = ckpt.load_latest(run).state
    assert state["world_size"] == 2
    diff = assert_same_run(run, reference[mode])
    report(f"two-nodes-{mode}", seconds=round(seconds, 1), max_weight_diff=diff)


def test_node_killed_mid_run_torchrun_restarts_and_resumes_exactly(nodes, corpora, reference, tmp_path):
    run, killed = tmp_path / "run", []
    start = time.monotonic()
    result = nodes.run_both(cli_args(corpora["sentence"], run), tmp_path, restarts=1,
                            during=kill_worker_after("b", 4, run, killed))
    seconds = time.monotonic() - start
    for node, (code, log) in result.items():
        assert code == 0, f"node {node}:\n{log[-3000:]}"
    assert killed and killed[0][1] < UPDATES, killed  # the kill came mid-run
    assert "torchrun restarted the workers: continuing from the newest checkpoint" in result["a"][1]
    assert "resuming at update" in result["a"][1]
    diff = assert_same_run(run, reference["sentence"])
    report("kill-with-restart", seconds=round(seconds, 1), killed_after_checkpoint=killed[0][1], max_weight_diff=diff)


def test_node_killed_without_restarts_survivor_stops_then_resume_on_one_process(nodes, corpora, reference, tmp_path,
                                                                                capsys):
    run, killed = tmp_path / "run", []
    result = nodes.run_both(cli_args(corpora["sentence"], run), tmp_path, during=kill_worker_after("b", 4, run, killed))
    stopped = time.monotonic()
    assert killed and killed[0][1] < UPDATES, killed
    code_a, log_a = result["a"]
    assert result["b"][0] != 0 and code_a != 0
    # the survivor (rank 0, node A) names itself, the cause, the last checkpoint and the way on
    assert "rank 0 of 2 on host" in log_a and "lost contact with the other processes of the run" in log_a, log_a[-3000:]
    assert "the last checkpoint is" in log_a and "--resume" in log_a
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    saved = ckpt.load_latest(run).state["update"]
    assert 4 <= saved < UPDATES
    # (both nodes have exited by now; how long the survivor took after the kill is reported, bounded by the test)
    survivor_seconds = stopped - killed[0][0]
    assert survivor_seconds < 60

    # 2 nodes -> 1 process: the same global batches from the checkpoint on
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert f"{UPDATES} updates" in capsys.readouterr().out
    assert ckpt.load_latest(run).state["world_size"] == 1
    diff = assert_same_run(run, reference["sentence"])
    report("kill-without-restart", survivor_exit_seconds=round(survivor_seconds, 1), resumed_from=saved,
           max_weight_diff=diff)


def test_resume_one_process_on_two_nodes_and_a_node_without_the_run_folder_is_refused(nodes, corpora, reference,
                                                                                       tmp_path):
    run = tmp_path / "run"
    first = UPDATES // 2
    train(build_config(sets=SETS, flags=dict(FLAGS, data=str(corpora["sentence"]), out=str(run), max_updates=first)),
          silent=True)
    assert ckpt.load_latest(run).state["world_size"] == 1
    args = ["--out", str(run), "--resume", "--quiet", "--max-updates", str(UPDATES)]

    # node B has its own empty disk at the checkpoints' path: both nodes stop at once, each saying why
    start = time.monotonic()
    hidden = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f"mount -t tmpfs gcnn-test {run / ckpt.CHECKPOINTS_DIR} && exec \"$@\"", "sh"]
    result = nodes.run_both(args, tmp_path, wrap_b=hidden)
    refused_seconds = time.monotonic() - start
    (code_a, log_a), (code_b, log_b) = result["a"], result["b"]
    assert code_a != 0 and code_b != 0
    assert "rank 1 of 2 on host" in log_b and "cannot see" in log_b and "same path" in log_b, log_b[-3000:]
    assert "not resuming, because rank 1" in log_a, log_a[-3000:]
    assert ckpt.load_latest(run).state["update"] == first  # nothing was written

    # 1 process -> 2 nodes, with the folder shared
    start = time.monotonic()
    result = nodes.run_both(args, tmp_path)
    seconds = time.monotonic() - start
    for node, (code, log) in result.items():
        assert code == 0, f"node {node}:\n{log[-3000:]}"
    assert ckpt.load_latest(run).state["world_size"] == 2
    diff = assert_same_run(run, reference["sentence"])
    report("resume-1-to-2", seconds=round(seconds, 1), refused_seconds=round(refused_seconds, 1), max_weight_diff=diff)


def test_network_cut_mid_run_survivor_stops_within_dist_timeout(nodes, corpora, tmp_path):
    """A host that vanishes (no connection reset: its link goes down) costs at most train.dist_timeout seconds."""
    run, cut = tmp_path / "run", []
    timeout = 10

    def cut_link(pair: Nodes) -> None:
        target = run / ckpt.CHECKPOINTS_DIR / f"{ckpt.PREFIX}{4:08d}"
        deadline = time.monotonic() + 180
        while not target.is_dir():
            assert time.monotonic() < deadline, f"{target} never appeared"
            time.sleep(0.02)
        _ip("-n", pair.ns["b"], "link", "set", "dev", pair.dev["b"], "down")
        cut.append(time.monotonic())

    args = cli_args(corpora["sentence"], run) + ["--set", f"dist_timeout={timeout}"]
    node_a = nodes.torchrun("a", args, log=tmp_path / "node-a.log")
    nodes.torchrun("b", args, log=tmp_path / "node-b.log")
    cut_link(nodes)
    node_a.wait(timeout=timeout + 60)
    waited = time.monotonic() - cut[0]
    log_a = (tmp_path / "node-a.log").read_text()
    assert node_a.returncode != 0
    assert "rank 0 of 2 on host" in log_a and "lost contact with the other processes of the run" in log_a, log_a[-3000:]
    assert "the last checkpoint is" in log_a
    assert ckpt.load_latest(run).state["update"] < UPDATES
    assert waited < timeout + 45, waited
    report("network-cut", dist_timeout=timeout, survivor_exit_seconds=round(waited, 1))
