"""Training end to end on a tiny corpus: the run folder, exact resume, accumulation, robustness, signals, the CLI."""

import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import gcnn
from gcnn.cli import main
from gcnn.data import find_corpus, prepare
from gcnn.errors import CheckpointError, ConfigError, GcnnError
from gcnn.train import TrainingError, build_config, load_run_config, train
from gcnn.train import checkpoint as ckpt
from gcnn.train.monitor import Progress, read_metrics


def write_corpus(folder: Path) -> dict:
    """Lines of a repetitive artificial language (so a tiny model learns it in a few updates)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    files = {}
    for split, lines in (("train", 400), ("valid", 40), ("test", 40)):
        path = folder / f"{split}.txt"
        with open(path, "w") as f:
            for _ in range(lines):
                k = rng.randrange(60)
                f.write(" ".join(words[(k + 3 * j) % 60] for j in range(rng.randrange(4, 12))) + "\n")
        files[split] = [path]
    return files


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    files = write_corpus(folder)
    prepare(find_corpus(train=files["train"], valid=files["valid"], test=files["test"]), folder / "prepared")
    return folder / "prepared"


def make_config(prepared: Path, out: Path, *sets: str, **flags):
    base = dict(data=str(prepared), out=str(out), arch="gcnn-tiny", batch_size=8, context=16, max_updates=6)
    base.update(flags)
    return build_config(sets=["log_every=1", "tensorboard=false", *sets], flags=base)


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["update"], r["loss"]) for r in read_metrics(run_dir) if r["kind"] == "train"]


def last_weights(run_dir: Path) -> dict:
    return load_file(str(ckpt.list_checkpoints(run_dir)[-1] / "model.safetensors"))


# ------------------------------------------------------------------------------------------------ end to end
def test_end_to_end_train_resume_and_loss_goes_down(prepared, tmp_path):
    run = tmp_path / "run"
    first = train(make_config(prepared, run, "optimizer=adamw", "lr=0.01", "schedule=constant", max_updates=10,
                              valid_every=5), silent=True)
    assert first.updates == 10 and first.stop_reason == "max_updates"
    for name in ("config.json", "model.safetensors", "vocab.json", "run.json", "metrics.jsonl", "learning_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    model = gcnn.load(run)  # the run folder is a model folder
    assert model.vocab_size == gcnn.data.PreparedData.open(prepared).vocab_size
    info = json.loads((run / "run.json").read_text())
    assert info["updates"] == 10 and info["status"] == "finished"
    assert info["data"]["vocab_size"] == model.vocab_size and len(info["data"]["vocab_sha256"]) == 64
    assert math.isclose(info["best_valid_ppl"], first.best_valid_ppl)

    second = train(build_config(flags={"max_updates": 20}, base=load_run_config(run)), resume=True, silent=True)
    assert second.updates == 20
    records = read_metrics(run)
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["update"] for r in train_records] == list(range(1, 21))
    times = [r["time"] for r in train_records]  # wall-clock since the run started: it goes on across the resume
    assert times == sorted(times) and times[10] > times[9] > 0
    assert {"loss", "ppl", "lr", "grad_norm", "tokens_per_s", "tokens"} <= set(train_records[0])
    valid = [r["loss"] for r in records if r["kind"] == "valid"]
    assert len(valid) == 4 and valid[-1] < valid[0] - 0.3  # learned something, across the resume
    assert second.best_valid_ppl < first.best_valid_ppl
    assert sum(loss for _, loss in train_losses(run)[-5:]) < sum(loss for _, loss in train_losses(run)[:5])


def test_resume_is_exact_on_cpu_fp32(prepared, tmp_path):
    """N updates straight == N/2, stop, resume, N/2 more: same losses, same weights (dropout and accumulation on)."""
    sets = ("model.dropout=0.2", "accum_steps=2", "valid_every=3")
    straight = tmp_path / "straight"
    train(make_config(prepared, straight, *sets, max_updates=10), silent=True)
    split = tmp_path / "split"
    train(make_config(prepared, split, *sets, max_updates=5), silent=True)
    train(build_config(flags={"max_updates": 10}, base=load_run_config(split)), resume=True, silent=True)
    assert train_losses(split) == train_losses(straight)
    a, b = last_weights(straight), last_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_cosine_decays_over_the_minutes_and_threads_are_set(prepared, tmp_path):
    threads = torch.get_num_threads()
    try:
        config = make_config(prepared, tmp_path / "timed", "optimizer=adamw", "lr=0.01", "schedule=cosine",
                             "min_lr=0.0001", "threads=1", max_updates=0, max_minutes=0.04)
        result = train(config, silent=True)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert result.stop_reason == "max_minutes" and result.updates > 3
    records = [r for r in read_metrics(tmp_path / "timed") if r["kind"] == "train"]
    lrs, times = [r["lr"] for r in records], [r["time"] for r in records]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[0] > 0.005  # no warmup: starts near the peak
    assert lrs[-1] < 0.003  # most of the way down the cosine when the 2.4 s were up
    assert times == sorted(times) and times[-1] <= 0.04 * 60 + 5
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "timed")[-1]).state
    # the last checkpoint holds the run's clock at its save: after the last update's record; when a scheduled
    # validation saved the last update just before the budget ran out, the stop adds no second checkpoint, so the
    # clock there may fall a few ms short of the budget itself (the stop reason above says the budget was reached)
    assert times[-1] <= state["wall_seconds"] <= 0.04 * 60 + 5


def test_accumulation_equals_one_large_batch(prepared, tmp_path):
    train(make_config(prepared, tmp_path / "big", max_updates=2), silent=True)
    train(make_config(prepared, tmp_path / "accum", "accum_steps=4", max_updates=2), silent=True)
    a, b = last_weights(tmp_path / "big"), last_weights(tmp_path / "accum")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for (_, x), (_, y) in zip(train_losses(tmp_path / "big"), train_losses(tmp_path / "accum")):
        assert math.isclose(x, y, rel_tol=1e-6)


def test_bf16_autocast_trains_on_cpu(prepared, tmp_path):
    result = train(make_config(prepared, tmp_path / "bf16", "precision=bf16"), silent=True)
    assert math.isfinite(result.valid_ppl) and result.skipped_updates == 0


def test_fp16_needs_cuda(prepared, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        train(make_config(prepared, tmp_path / "fp16", "precision=fp16", "device=cpu"), silent=True)


# ------------------------------------------------------------------------------------------------ robustness
def poison_updates(monkeypatch, bad_calls: set[int]) -> None:
    """Make the model's loss NaN on the given training forward calls (0-based)."""
    original = gcnn.GatedConvLM.forward
    calls = {"n": 0}

    def forward(self, tokens, targets=None, cache=None):
        out = original(self, tokens, targets, cache)
        if self.training:
            if calls["n"] in bad_calls:
                out.target_log_probs = out.target_log_probs * float("nan")
            calls["n"] += 1
        return out

    monkeypatch.setattr(gcnn.GatedConvLM, "forward", forward)


def test_non_finite_updates_are_skipped_and_counted(prepared, tmp_path, monkeypatch):
    poison_updates(monkeypatch, {1, 2})
    run = tmp_path / "run"
    result = train(make_config(prepared, run), silent=True)
    assert result.updates == 6 and result.skipped_updates == 2
    assert math.isfinite(result.valid_ppl)
    assert all(torch.isfinite(t).all() for t in last_weights(run).values())
    assert json.loads((run / "run.json").read_text())["skipped_updates"] == 2


def test_training_stops_when_non_finite_keeps_happening(prepared, tmp_path, monkeypatch):
    poison_updates(monkeypatch, set(range(100)))
    with pytest.raises(TrainingError, match="3 updates in a row had a non-finite loss"):
        train(make_config(prepared, tmp_path / "run", "max_bad_updates=3"), silent=True)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and "3 updates in a row" in info["stop_reason"]


def test_sigint_saves_a_checkpoint_that_resumes(prepared, tmp_path, monkeypatch):
    original = gcnn.GatedConvLM.forward
    calls = {"n": 0}

    def forward(self, tokens, targets=None, cache=None):
        calls["n"] += self.training
        if calls["n"] == 3 and self.training:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of update 3
        return original(self, tokens, targets, cache)

    monkeypatch.setattr(gcnn.GatedConvLM, "forward", forward)
    run = tmp_path / "run"
    result = train(make_config(prepared, run, max_updates=50), silent=True)
    assert result.stop_reason == "SIGINT" and result.updates == 3  # the update in progress was finished
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["update_00000003"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.setattr(gcnn.GatedConvLM, "forward", original)
    resumed = train(build_config(flags={"max_updates": 5}, base=load_run_config(run)), resume=True, silent=True)
    assert resumed.updates == 5 and [u for u, _ in train_losses(run)] == [1, 2, 3, 4, 5]


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gcnn", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for_updates(run: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(train_losses(run)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


def cli_args(prepared: Path, run: Path, *extra: str) -> list[str]:
    return ["--data", str(prepared), "--out", str(run), "--arch", "gcnn-tiny", "--batch-size", "8", "--context", "16",
            "--quiet", "--set", "log_every=1", "--set", "tensorboard=false", *extra]


def test_sigterm_checkpoints_and_exits_143(prepared, tmp_path):
    run = tmp_path / "run"
    proc = cli(*cli_args(prepared, run, "--max-updates", "100000"))
    wait_for_updates(run, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "--resume" in err and "stopped by SIGTERM" in out
    loaded = ckpt.load_latest(run)
    assert loaded.state["update"] == len(train_losses(run)) >= 2


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(prepared, tmp_path):
    """Checkpoints every update, killed -9 at a few moments: the newest complete checkpoint loads and resumes."""
    run = tmp_path / "run"
    proc = cli(*cli_args(prepared, run, "--max-updates", "100000", "--valid-every", "1"))
    wait_for_updates(run, 2, proc)
    time.sleep(random.Random(1).uniform(0.0, 0.5))
    proc.kill()
    proc.communicate()
    loaded = ckpt.load_latest(run)
    assert loaded.state["update"] >= 1
    result = train(build_config(flags={"max_updates": loaded.state["update"] + 1}, base=load_run_config(run)),
                   resume=True, silent=True)
    assert result.updates == loaded.state["update"] + 1


def test_failed_checkpoint_write_keeps_the_previous_one(prepared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(make_config(prepared, run, max_updates=2), silent=True)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_tensors", disk_full)
    with pytest.raises(GcnnError, match="No space left on device.*previous checkpoints .* are intact"):
        train(build_config(flags={"max_updates": 4}, base=load_run_config(run)), resume=True, silent=True)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["update_00000002"]  # no half-written folder
    assert ckpt.load_latest(run).state["update"] == 2


def test_checkpoints_hold_only_safetensors_and_json(prepared, tmp_path):
    run = tmp_path / "run"
    train(make_config(prepared, run, "optimizer=adamw", "lr=0.01"), silent=True)
    files = {p.name for p in ckpt.list_checkpoints(run)[-1].iterdir()}
    assert files == {"config.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors",
                     "trainer_state.json", "SHA256SUMS"}
    loaded = ckpt.load_latest(run)
    assert set(loaded.optimizer_state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_keeps_last_n_and_the_best(prepared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # validation losses that are best at update 2 and worse after
    losses = iter([1.0, 0.5, 2.0, 3.0, 4.0, 5.0, 6.0])
    monkeypatch.setattr("gcnn.train.trainer.Trainer._validation_loss", lambda self: next(losses))
    train(make_config(prepared, run, "valid_every=1", "keep_last=2"), silent=True)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["update_00000002", "update_00000005", "update_00000006"]
    assert json.loads((run / "run.json").read_text())["best_update"] == 2


# ------------------------------------------------------------------------------------------------ bad input
def test_unwritable_run_folder_is_reported_before_training(prepared, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(GcnnError, match="not writable"):
        train(make_config(prepared, blocker / "run"), silent=True)


def test_too_little_disk_space_is_reported_before_training(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=1000))
    with pytest.raises(GcnnError, match=r"only 0 MiB free, but the checkpoints need about"):
        train(make_config(prepared, tmp_path / "run"), silent=True)
    assert not ckpt.list_checkpoints(tmp_path / "run")


def test_fresh_run_refuses_an_existing_run(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config(prepared, run, max_updates=1), silent=True)
    with pytest.raises(GcnnError, match="continue it with resume=True, or choose another out folder"):
        train(make_config(prepared, run, max_updates=1), silent=True)
    from gcnn.cli import main

    args = ["train", "--data", str(prepared), "--out", str(run), "--arch", "gcnn-tiny", "--max-updates", "1"]
    assert main(args) == 2  # the default batch is too large for this corpus: the message names the flags
    assert "use a smaller --batch-size or --context" in capsys.readouterr().err
    assert main([*args, "--batch-size", "8", "--context", "16"]) == 2
    assert "continue it with --resume, or choose another --out" in capsys.readouterr().err


def test_resume_refuses_a_changed_batch_size(prepared, tmp_path):
    run = tmp_path / "run"
    train(make_config(prepared, run, max_updates=1), silent=True)
    with pytest.raises(ConfigError, match="train.batch_size cannot change when resuming"):
        train(build_config(flags={"batch_size": 4, "max_updates": 2}, base=load_run_config(run)), resume=True,
              silent=True)


def test_resume_without_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="run.json: not found"):
        load_run_config(tmp_path)


# ------------------------------------------------------------------------------------------------ command line
def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--data", "--arch", "--out", "--config", "--set", "--resume", "--max-updates", "--max-epochs",
                   "--max-minutes", "--precision", "--accum-steps", "--quiet"):
        assert option in out


def test_cli_trains_and_prints_a_summary(prepared, tmp_path, capsys):
    assert main(["train", *cli_args(prepared, tmp_path / "r"), "--max-updates", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "2 updates" in out and "valid ppl" in out


@pytest.mark.parametrize("args,message", [
    (["--set", "train.lrr=1"], "unknown train key 'lrr'"),
    (["--set", "lr=fast"], "train.lr must be a finite number"),
    (["--set", "model.dropoutt=0.1"], "dropoutt"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
])
def test_cli_rejects_bad_settings_with_exit_2(prepared, tmp_path, capsys, args, message):
    assert main(["train", *cli_args(prepared, tmp_path / "r"), "--max-updates", "1", *args]) == 2
    assert message in capsys.readouterr().err
    assert not ckpt.list_checkpoints(tmp_path / "r")


def test_progress_bar_shows_throughput_loss_perplexity_and_time_left():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = Progress(100, 0, every=10, quiet=False, stream=screen, minutes=5)
    bar.update(3, loss=math.log(150.0), tokens_per_s=1234.0, lr=0.01)
    bar.close()
    shown = screen.getvalue()
    assert "3/100" in shown and "1,234 tok/s" in shown and "ppl 150.0" in shown and " left" in shown
    lines = io.StringIO()
    quiet = Progress(0, 0, every=2, quiet=True, stream=lines, minutes=1)
    for update in (1, 2, 3, 4):
        quiet.update(update, loss=1.0, tokens_per_s=10.0, lr=0.1)
    assert lines.getvalue().count("\n") == 2 and "update 4: loss 1.000" in lines.getvalue()
