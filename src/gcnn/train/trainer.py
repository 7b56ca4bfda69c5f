"""The training loop: updates with gradient accumulation, mixed precision, DDP, validation, checkpoints, resume.

One update = ``accum_steps`` micro-batches whose gradients add up to the gradient of the mean loss over every
counted target of the update, on all processes together (each micro-batch's summed loss is divided by the update's
global token count), so accumulation and data parallelism compute what one large batch computes.

A run stops at the first bound reached (``max_updates``, ``max_epochs``, ``max_minutes``), when early stopping says
so (``early_stop_patience`` scheduled validations without an improvement of more than ``min_delta``), when an
``on_validation`` callback asks it to (a hyper-parameter search pruning the run), or at SIGINT/SIGTERM, after
finishing the update in progress; it then validates (unless stopped by a signal or just validated), saves a
checkpoint and returns a :class:`RunResult`. Whatever stopped it, the run folder's model is the best one by
validation.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gcnn.architectures import model_from_config
from gcnn.data import Batches, PreparedData
from gcnn.errors import CheckpointError, ConfigError, GcnnError, GcnnWarning, describe_error, option
from gcnn.fs import atomic_write_json, exclusive, is_leftover, remove_leftovers
from gcnn.io import describe_folder, write_model
from gcnn.layout import CURVE_FILE, METRICS_FILE, RUN_FILE, VOCAB_FILE
from gcnn.lm import IGNORE_INDEX
from gcnn.train import checkpoint as ckpt
from gcnn.train import distributed
from gcnn.train.config import TrainConfig, resolve_model_config
from gcnn.train.monitor import MetricsLog, Progress, perplexity, plot_learning_curve, truncate_metrics
from gcnn.train.optim import Schedule, build_optimizer
from gcnn.version import __version__

RUN_FORMAT = "gcnn-run"
# keys that must not change when a run is resumed: they define the model, the data order or its position
FROZEN_ON_RESUME = ("model", "batch_size", "context", "accum_steps", "seed")
# the reasons a run stops; where several hold at once (on any process), the highest code wins
STOP_CODES = {0: None, 1: "max_updates", 2: "max_epochs", 3: "max_minutes", 4: "early_stop", 5: "on_validation",
              6: "SIGHUP", 7: "SIGTERM", 8: "SIGINT"}
SIGNAL_CODES = {"SIGHUP": 6, "SIGTERM": 7, "SIGINT": 8}


class TrainingError(GcnnError):
    """Training cannot go on (the loss or gradients keep being non-finite)."""


@dataclass
class RunResult:
    """How a run ended. Perplexities are exp(mean validation loss per target token)."""

    run_dir: Path
    updates: int
    epochs: float
    tokens: int
    train_loss: float
    valid_ppl: float
    best_valid_ppl: float
    skipped_updates: int
    seconds: float
    stop_reason: str

    stop_detail: str | None = None

    def summary(self) -> str:
        """One line for the end of a run."""
        return (
            f"{self.run_dir}: {self.updates} updates ({self.epochs:.2f} epochs, {self.tokens:,} tokens) in "
            f"{self.seconds / 60:.1f} min, stopped by {self.stop_reason}; train loss {self.train_loss:.3f}, "
            + (f"valid ppl {self.valid_ppl:.2f} (best {self.best_valid_ppl:.2f})" if math.isfinite(self.best_valid_ppl)
               else "valid ppl not measured (stopped before the first validation)")
            + (f"; {self.skipped_updates} updates skipped (non-finite)" if self.skipped_updates else "")
            + (f"; {self.stop_detail}" if self.stop_detail else "")
        )


@dataclass(frozen=True)
class ValidationEvent:
    """What an ``on_validation`` callback is told after each scheduled validation: the update and epoch reached,
    the validation loss and perplexity, the best so far, and the run's wall-clock seconds (resumes included)."""

    update: int
    epoch: float
    loss: float
    ppl: float
    best_ppl: float
    seconds: float


OnValidation = Callable[[ValidationEvent], Any]


def train(config: TrainConfig, *, resume: bool | str = False, quiet: bool = False, silent: bool = False,
          on_validation: OnValidation | None = None) -> RunResult:
    """Train the model of ``config`` on its data into its run folder (``config.out``); see :class:`TrainConfig`.

    ``resume`` continues from the newest checkpoint in the run folder; ``"auto"`` does so if torchrun restarted
    the workers (``TORCHELASTIC_RESTART_COUNT`` > 0 on any node) and the run folder holds a checkpoint (rank 0
    decides for all), else starts afresh. ``quiet`` replaces the progress bar by a log line every ``log_every``
    updates; ``silent`` prints nothing. Under ``torchrun`` every process calls this, and a process whose peers are
    lost raises :class:`~gcnn.train.distributed.PeerLostError` within ``train.dist_timeout`` seconds.

    ``on_validation(event)`` is called after every scheduled validation (every ``valid_every`` updates and at each
    epoch end, not the final one) with a :class:`ValidationEvent`, after the checkpoint of that update is saved; a
    true return value stops the run there (stop reason ``on_validation``), which is how a hyper-parameter search
    prunes a trial. Under ``torchrun`` the run stops if any process's callback says so.
    """
    config.validate()
    ctx = distributed.setup(config.device, config.dist_timeout)
    failed = False
    try:
        if resume == "auto":  # a restart on any node (their counts differ) continues from the newest checkpoint
            restarted = distributed.all_max(distributed.restart_count(), ctx) > 0
            resume = restarted and bool(distributed.broadcast_from_main(
                bool(ckpt.list_checkpoints(Path(config.out))) if ctx.is_main else None, ctx))
            if resume and ctx.is_main and not silent:
                print(f"gcnn train: torchrun restarted the workers: continuing from the newest checkpoint in "
                      f"{config.out}", file=sys.stderr, flush=True)
        with _StopSignals() as signals, _run_folder(Path(config.out), ctx):
            trainer = Trainer(config, ctx, signals, resume=resume, quiet=quiet, silent=silent,
                              on_validation=on_validation)
            return trainer.run()
    except distributed.PeerLostError:
        failed = True
        raise
    except Exception as exc:
        if ctx.enabled and not isinstance(exc, GcnnError) and distributed.lost_peer(exc):
            failed = True
            raise distributed.PeerLostError(
                f"{distributed.whoami(ctx)}: lost contact with the other processes of the run "
                f"({distributed.short_cause(exc)}); {_resume_hint(Path(config.out))}"
            ) from None
        raise
    finally:
        distributed.teardown(ctx, failed=failed)


def _resume_hint(run_dir: Path) -> str:
    saved = ckpt.list_checkpoints(run_dir)
    where = f"the last checkpoint is {saved[-1]}" if saved else "no checkpoint was saved yet"
    return (f"another node or worker probably died (its own log says why) or the network failed; {where}: continue "
            f"with `gcnn train --out {run_dir} --resume` (under torchrun as before; the number of nodes and "
            "processes may change)")


@contextlib.contextmanager
def _run_folder(run_dir: Path, ctx: distributed.Dist) -> Iterator[None]:
    """The main process's claim on the run folder for the whole run: the folder must be new, empty or (a run folder)
    this run's; one writer at a time (an OS lock, released by the kernel if the process dies); leftovers of killed
    writers are removed. Other processes write nothing there."""
    if not ctx.is_main:
        yield
        return
    check_run_destination(run_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(run_dir, "gcnn train"))
        except OSError as exc:
            raise GcnnError(f"run folder {run_dir} is not writable: {describe_error(exc)}") from None
        for folder in (run_dir, run_dir / ckpt.CHECKPOINTS_DIR):
            remove_leftovers(folder, all_writers=True)  # no other writer can be live: we hold the lock
        yield


def check_run_destination(run_dir: Path) -> None:
    """Refuse, before anything is written, a run folder that holds something other than a gcnn run: a prepared-data
    folder, an exported model, other files."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise GcnnError(f"{option('out')} {run_dir}: exists and is not a folder")
    if (run_dir / RUN_FILE).is_file() or not any(e for e in run_dir.iterdir() if not is_leftover(e)):
        return
    entries = sorted(p.name for p in run_dir.iterdir())
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    raise GcnnError(
        f"{option('out')} {run_dir} is {describe_folder(run_dir)} ({shown}), not a run folder: training goes into a "
        f"new or empty folder, or continues a run folder of its own; choose another {option('out', 'out folder')}"
    )


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The training config a run folder was started with (``run.json``), to resume it."""
    path = Path(run_dir) / RUN_FILE
    run = _read_run_file(path)
    try:
        return TrainConfig.from_dict(run["train_config"], source=str(path))
    except KeyError:
        raise CheckpointError(f"{path}: damaged (no train_config)") from None


def _read_run_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {path.parent} a run folder written by `gcnn train`?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path}: not a gcnn run file")
    return data


class _StopSignals:
    """Turns the first SIGINT, SIGTERM or SIGHUP (a closed terminal) into a request to stop after the current update;
    a second SIGINT interrupts at once. Only installed in the main thread (signal handlers can only live there)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One run: built from a config (fresh or resumed), then :meth:`run`."""

    def __init__(self, config: TrainConfig, ctx: distributed.Dist, signals: _StopSignals, *, resume: bool,
                 quiet: bool, silent: bool, on_validation: OnValidation | None = None) -> None:
        self.config, self.ctx, self.signals = config, ctx, signals
        self.on_validation, self.hook_stop = on_validation, False
        self.run_dir = Path(config.out)
        self.started = time.monotonic()
        if config.precision == "fp16" and ctx.device.type != "cuda":
            raise ConfigError("train.precision = fp16 needs a CUDA GPU (with a gradient scaler); use bf16 on a CPU")
        micro = config.batch_size // config.accum_steps
        if micro % ctx.world_size:
            raise ConfigError(
                f"train.batch_size {config.batch_size} / accum_steps {config.accum_steps} = {micro} sequences per "
                f"micro-batch, which the {ctx.world_size} processes cannot share equally"
            )
        self.micro_batch = micro
        if config.threads:
            torch.set_num_threads(config.threads)
        self.data = PreparedData.open(config.data)
        torch.manual_seed(config.seed)
        self.model_config = resolve_model_config(config.model, self.data.vocab_size)
        self.model = model_from_config(self.model_config).to(ctx.device)
        self.model.vocab = self.data.vocab  # its fingerprint goes into every saved model
        field = getattr(self.model_config, "receptive_field", None)
        if field is not None and config.context < field:
            warnings.warn(
                f"train.context {config.context} is shorter than the model's receptive field ({field} tokens): no "
                f"position is trained with the {field} tokens of context the model can use", GcnnWarning, stacklevel=3,
            )
        max_len = getattr(self.model_config, "max_len", None)
        if max_len is not None and config.context < max_len:  # positions past the context are never trained
            self.model.trained_positions = config.context
        self.ddp_model = distributed.wrap(self.model, ctx)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.batches_per_epoch = self._train_batches(epoch=0, start=0).num_batches
        self.per_epoch = math.ceil(self.batches_per_epoch / config.accum_steps)  # updates
        # counters, restored on resume
        self.update, self.epoch, self.batch_in_epoch, self.tokens = 0, 0, 0, 0
        self.skipped, self.bad_in_a_row = 0, 0
        self.best_loss, self.best_update, self.last_valid = math.inf, -1, (-1, math.inf)
        self.saved_update, self.train_seconds, self.last_train_loss = -1, 0.0, math.nan
        self.previous_seconds = 0.0  # wall-clock seconds of the invocations before a resume
        # early stopping: the best validation loss that counted as an improvement (by more than min_delta), and the
        # scheduled validations since it
        self.patience_best, self.stale_validations = math.inf, 0
        loaded = self._load_checkpoint() if resume else None
        # the cosine schedule's length is fixed when a run starts, so a resumed run follows the same curve
        self.schedule_total = loaded.state["schedule_total"] if loaded else self._planned_updates()
        self.schedule = Schedule(self.optimizer, config, self.schedule_total)
        if loaded:
            self._restore(loaded)
        else:
            self._start_fresh()
        self.metrics = MetricsLog(self.run_dir, config.tensorboard) if ctx.is_main else None
        self.progress = Progress(self._planned_updates(), self.update, every=config.log_every, quiet=quiet,
                                 silent=silent or not ctx.is_main, minutes=config.max_minutes)
        self._window = _Window()

    # ------------------------------------------------------------------------------------------- setup
    def _train_batches(self, *, epoch: int, start: int) -> Batches:
        return Batches(self.data, split="train", batch_size=self.micro_batch, context=self.config.context,
                       seed=self.config.seed, epoch=epoch, rank=self.ctx.rank, world_size=self.ctx.world_size,
                       start=start, shuffle=True)

    def _planned_updates(self) -> int:
        """Updates the run will make if it stops at max_updates or max_epochs (0 if only time bounds it)."""
        bounds = [b for b in (self.config.max_updates, self.config.max_epochs * self.per_epoch) if b]
        return min(bounds) if bounds else 0

    def _start_fresh(self) -> None:
        if ckpt.list_checkpoints(self.run_dir):
            raise GcnnError(
                f"{self.run_dir} already holds a run with checkpoints: continue it with {option('resume', 'resume=True')}, "
                f"or choose another {option('out', 'out folder')}"
            )
        if self.ctx.is_main:
            self._check_room()
            (self.run_dir / ckpt.CHECKPOINTS_DIR).mkdir(exist_ok=True)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
            self._write_vocab()
            self._write_run_file("running")
        distributed.barrier(self.ctx)
        torch.manual_seed(self.config.seed + 1000 * self.ctx.rank)  # each process its own dropout masks

    def _check_room(self) -> None:
        slots = 2 if self.config.optimizer == "adamw" else int(self.config.momentum > 0)
        one = ckpt.checkpoint_bytes(self.model, slots)
        # the kept checkpoints, the best one, the one being written, and the best model in the run folder
        ckpt.check_run_folder(self.run_dir, one * (self.config.keep_last + 2) + ckpt.checkpoint_bytes(self.model, 0))

    def _write_vocab(self) -> None:
        self.data.vocab.save(self.run_dir / VOCAB_FILE)

    def _load_checkpoint(self) -> ckpt.Checkpoint:
        """The checkpoint to resume from. Under torchrun rank 0 chooses it (the newest loadable one) and every
        process loads that very folder, which it must see: the run folder is on a file system that every node sees
        at the same path. Any process's failure stops them all, each with a message (no process waits for one that
        gave up)."""
        loaded, error = None, None
        try:
            self._check_same_run(_read_run_file(self.run_dir / RUN_FILE))
            if self.ctx.is_main:
                loaded = ckpt.load_latest(self.run_dir)
                if loaded.state.get("model_config") != self.model_config.to_dict():
                    raise CheckpointError(f"{loaded.path}: trained with a different model config than the one given")
        except GcnnError as exc:
            if not self.ctx.enabled:
                raise
            error = exc
        name = distributed.broadcast_from_main(loaded.path.name if loaded is not None else None, self.ctx)
        if not self.ctx.is_main and error is None and name is not None:
            try:
                loaded = ckpt.load_checkpoint(self._wait_for_checkpoint(self.run_dir / ckpt.CHECKPOINTS_DIR / name))
            except GcnnError as exc:
                error = exc
        problems = distributed.gather_all(None if error is None else f"rank {self.ctx.rank}: {error}", self.ctx)
        if error is not None:
            raise error
        for problem in problems:
            if problem is not None:
                raise CheckpointError(f"{distributed.whoami(self.ctx)}: not resuming, because {problem}")
        return loaded

    def _wait_for_checkpoint(self, path: Path) -> Path:
        """``path`` once this process sees it; a network file system may show a new folder a few seconds late."""
        deadline = time.monotonic() + min(15.0, self.config.dist_timeout / 4)
        while not path.is_dir():
            if time.monotonic() > deadline:
                root = path.parent
                seen = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
                raise CheckpointError(
                    f"{distributed.whoami(self.ctx)} cannot see {path}, the checkpoint rank 0 resumes from (here "
                    f"{root} holds {', '.join(seen[-4:]) if seen else 'nothing'}): every node must see the run "
                    f"folder {self.run_dir} at the same path, on a file system they share (NFS, Lustre, ...); "
                    "mount it there on every node and resume again"
                )
            time.sleep(0.2)
        return path

    def _restore(self, loaded: ckpt.Checkpoint) -> None:
        """Continue exactly where the checkpoint stopped: weights, optimizer, schedule, counters, RNG streams."""
        try:
            self.model.load_state_dict(loaded.model_state)
            self.optimizer.load_state_dict(loaded.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{loaded.path}: does not fit the model or optimizer ({exc})") from None
        state = loaded.state
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.update, self.epoch, self.batch_in_epoch = state["update"], state["epoch"], state["batch_in_epoch"]
        self.tokens, self.skipped, self.bad_in_a_row = state["tokens"], state["skipped"], state["bad_in_a_row"]
        self.best_loss, self.best_update = state["best_valid_loss"], state["best_update"]
        self.last_valid = tuple(state["last_valid"])
        self.train_seconds, self.saved_update = state["train_seconds"], self.update
        self.previous_seconds = float(state.get("wall_seconds", 0.0))
        # checkpoints of earlier versions have no early-stopping state: start counting from their best
        self.patience_best = float(state.get("patience_best", self.best_loss))
        self.stale_validations = int(state.get("stale_validations", 0))
        if len(loaded.rng) == self.ctx.world_size:
            ckpt.restore_rng(loaded.rng[self.ctx.rank], self.ctx.device)
        else:
            warnings.warn(f"{loaded.path} was written by {len(loaded.rng)} processes, this run has "
                          f"{self.ctx.world_size}: the random streams (dropout) restart from the seed", stacklevel=2)
            torch.manual_seed(self.config.seed + 1000 * self.ctx.rank + self.update)
        if self.ctx.is_main:
            self._check_room()
            truncate_metrics(self.run_dir, self.update)

    def _check_same_run(self, run: dict[str, Any]) -> None:
        before = run["train_config"]
        now = self.config.to_dict()
        for key in FROZEN_ON_RESUME:
            if before.get(key) != now[key]:
                raise ConfigError(
                    f"train.{key} cannot change when resuming {self.run_dir} (it was {before.get(key)!r}, now "
                    f"{now[key]!r}); start a new run with another {option('out')} instead"
                )
        if run["data"]["vocab_sha256"] != self._data_identity()["vocab_sha256"]:
            raise ConfigError(
                f"{option('data')} {self.config.data}: its vocabulary differs from the one {self.run_dir} was trained on"
            )

    def _data_identity(self) -> dict[str, Any]:
        manifest = self.data.manifest
        return {
            "path": str(Path(self.config.data).resolve()),
            "mode": self.data.mode,
            "vocab_size": self.data.vocab_size,
            "vocab_sha256": manifest["vocab"]["sha256"],
        }

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> RunResult:
        self.progress.log(self._banner())
        groups = self._update_groups()
        try:
            return self._loop(groups)
        except GcnnError as exc:  # say so in run.json, which would otherwise still read "running"
            if self.ctx.is_main:
                with contextlib.suppress(OSError, GcnnError):  # a full disk may refuse this too
                    self._write_run_file("failed", str(exc))
            raise
        finally:
            self.progress.close()
            if self.metrics is not None:
                self.metrics.close()

    def _loop(self, groups: Iterator[list[tuple[torch.Tensor, torch.Tensor]]]) -> RunResult:
        try:
            while (reason := self._stop_reason()) is None:
                group = next(groups)
                self._train_update(group)
                self.batch_in_epoch += len(group)
                scheduled = bool(self.config.valid_every) and self.update % self.config.valid_every == 0
                if self.batch_in_epoch == self.batches_per_epoch:
                    self.epoch, self.batch_in_epoch, scheduled = self.epoch + 1, 0, True
                if scheduled:
                    loss = self._validate(step_schedule=True)
                    self._save()
                    if self.on_validation is not None:
                        self.hook_stop = bool(self.on_validation(ValidationEvent(
                            update=self.update, epoch=self._epochs(), loss=loss, ppl=perplexity(loss),
                            best_ppl=perplexity(self.best_loss), seconds=self._run_seconds())))
            return self._finish(reason)
        except Exception as exc:
            if self.ctx.enabled and not isinstance(exc, GcnnError) and distributed.lost_peer(exc):
                raise distributed.PeerLostError(
                    f"{distributed.whoami(self.ctx)}: lost contact with the other processes of the run during update "
                    f"{self.update + 1} ({distributed.short_cause(exc)}); {_resume_hint(self.run_dir)}"
                ) from None
            raise

    def _update_groups(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The micro-batches of each update in turn, epoch after epoch, from the current data position."""
        while True:
            batches = iter(self._train_batches(epoch=self.epoch, start=self.batch_in_epoch))
            while group := list(islice(batches, self.config.accum_steps)):
                yield group

    def _stop_reason(self) -> str | None:
        c = self.config
        code = 0
        if c.max_updates and self.update >= c.max_updates:
            code = 1
        elif c.max_epochs and self.epoch >= c.max_epochs:
            code = 2
        elif c.max_minutes and time.monotonic() - self.started >= 60 * c.max_minutes:
            code = 3
        if self.early_stopped:
            code = 4
        if self.hook_stop:
            code = 5
        if self.signals.received:
            code = SIGNAL_CODES[self.signals.received]
        return STOP_CODES[distributed.all_max(code, self.ctx)]

    @property
    def early_stopped(self) -> bool:
        patience = self.config.early_stop_patience
        return bool(patience) and self.stale_validations >= patience

    def _early_stop_detail(self) -> str:
        return (f"early stopping: {self.stale_validations} validations in a row without lowering the validation loss "
                f"by more than {self.config.min_delta:g} (patience {self.config.early_stop_patience}); the best "
                f"model, from update {self.best_update} (valid ppl {perplexity(self.best_loss):.2f}), is the run's")

    def _train_update(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        start = time.monotonic()
        self.ddp_model.train()
        device, world = self.ctx.device, self.ctx.world_size
        local_tokens = sum(int((targets != IGNORE_INDEX).sum()) for _, targets in group)
        update_tokens = distributed.all_sum([local_tokens], self.ctx)[0]
        nll = 0.0
        for i, (inputs, targets) in enumerate(group):
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            last = i == len(group) - 1
            sync = contextlib.nullcontext() if last or not self.ctx.enabled else self.ddp_model.no_sync()
            with sync:
                with self._autocast():
                    summed = -self.ddp_model(inputs, targets).target_log_probs.sum()
                # DDP averages gradients over processes: scale so they add up to the gradient of the global mean
                loss = summed * (world / max(update_tokens, 1))
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            nll += float(summed.detach())
        loss_value = distributed.all_sum([nll], self.ctx)[0] / max(update_tokens, 1)
        grad_norm = self._clip_and_step(loss_value)
        self.update += 1
        self.tokens += int(update_tokens)
        self.schedule.after_update(self._run_seconds())
        self.train_seconds += time.monotonic() - start
        self._window.add(loss_value, update_tokens, time.monotonic() - start)
        self._log_train(grad_norm)

    def _clip_and_step(self, loss_value: float) -> float:
        """Clip, then step unless the loss or the gradient is non-finite (then skip and count the update)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.config.clip_norm if self.config.clip_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself when the gradients overflowed
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # under fp16 an overflowing gradient is the scaler's business; a non-finite loss is always a failure
        failed = not math.isfinite(loss_value) or (not finite and self.scaler is None)
        self.skipped += not finite
        self.bad_in_a_row = self.bad_in_a_row + 1 if failed else 0
        if self.bad_in_a_row >= self.config.max_bad_updates:
            remedies = ["lower train.lr", "set train.clip_norm"] + (["use fp32"] if self.config.precision != "fp32" else [])
            saved = ckpt.list_checkpoints(self.run_dir)
            where = (f"The last good checkpoint is {saved[-1]}" if saved else
                     "No checkpoint was saved yet (the run stopped before its first validation)")
            raise TrainingError(
                f"{self.bad_in_a_row} updates in a row had a non-finite loss or gradient (update {self.update + 1}, "
                f"loss {loss_value}, gradient norm {grad_norm}); {', '.join(remedies[:-1])} or {remedies[-1]}. {where}"
            )
        return grad_norm

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def _log_train(self, grad_norm: float) -> None:
        window = self._window
        self.progress.update(self.update, loss=window.loss, tokens_per_s=window.tokens_per_s, lr=self.schedule.lr)
        if self.update % self.config.log_every:
            return
        if self.metrics is not None:
            self.metrics.write({
                "kind": "train", "update": self.update, "epoch": self._epochs(), "tokens": self.tokens,
                "loss": window.loss, "ppl": perplexity(window.loss), "lr": self.schedule.lr, "grad_norm": grad_norm,
                "tokens_per_s": window.tokens_per_s, "skipped": self.skipped, "time": self._elapsed(),
            })
        self.last_train_loss = window.loss
        self._window = _Window()

    # ------------------------------------------------------------------------------------------- validation
    def _validate(self, *, step_schedule: bool) -> float:
        """Validate; step a plateau schedule if this is a scheduled validation; keep the best model; log."""
        loss = self._validation_loss()
        self.last_valid = (self.update, loss)
        if step_schedule:
            self.schedule.after_validation(loss)
            if loss < self.patience_best - self.config.min_delta:
                self.patience_best, self.stale_validations = loss, 0
            else:
                self.stale_validations += 1
        if loss < self.best_loss:
            self.best_loss, self.best_update = loss, self.update
            if self.ctx.is_main:
                try:
                    write_model(self.model, self.run_dir)
                except OSError as exc:
                    raise GcnnError(
                        f"could not write the best model into {self.run_dir}: {describe_error(exc)} (disk full or not "
                        f"writable?); the checkpoints in {self.run_dir / ckpt.CHECKPOINTS_DIR} are intact"
                    ) from None
        if self.metrics is not None:
            self.metrics.write({"kind": "valid", "update": self.update, "epoch": self._epochs(),
                                "tokens": self.tokens, "loss": loss, "ppl": perplexity(loss), "time": self._elapsed()})
            try:
                plot_learning_curve(self.run_dir)
            except OSError as exc:  # a plot is not worth stopping a run for: the metrics are in metrics.jsonl
                self.progress.log(f"warning: could not draw {self.run_dir / CURVE_FILE}: {describe_error(exc)}")
        self.progress.log(f"update {self.update} (epoch {self._epochs():.2f}): valid loss {loss:.3f}, "
                          f"ppl {perplexity(loss):.2f} (best {perplexity(self.best_loss):.2f})")
        return loss

    @torch.no_grad()
    def _validation_loss(self) -> float:
        """Mean loss per target token over the validation split (or its first valid_max_tokens targets), with
        the split's contiguous blocks shared out among the processes."""
        self.model.eval()
        batches = Batches(self.data, split="valid", batch_size=self.micro_batch, context=self.config.context,
                          shuffle=False)
        limit = len(batches)
        if self.config.valid_max_tokens:
            limit = min(limit, math.ceil(self.config.valid_max_tokens / (self.micro_batch * self.config.context)))
        nll, count = 0.0, 0
        for i, (inputs, targets) in enumerate(islice(batches, limit)):
            if i % self.ctx.world_size != self.ctx.rank:
                continue
            with self._autocast():
                out = self.model(inputs.to(self.ctx.device), targets.to(self.ctx.device))
            nll -= float(out.target_log_probs.double().sum())
            count += out.num_tokens
        nll, count = distributed.all_sum([nll, count], self.ctx)
        return nll / max(count, 1)

    # ------------------------------------------------------------------------------------------- saving
    def _save(self) -> None:
        """A checkpoint of the current update (every process takes part: rank 0 collects the RNG states)."""
        rng = distributed.gather_to_main(ckpt.capture_rng(self.ctx.device), self.ctx)
        if self.ctx.is_main:
            ckpt.save_checkpoint(self.run_dir, self.update, model=self.model,
                                 optimizer_state=self.optimizer.state_dict(), state=self._state(), rng=rng)
            best = {f"{ckpt.PREFIX}{self.best_update:08d}"}
            ckpt.prune(self.run_dir, self.config.keep_last, keep=best)
            self._write_run_file("running")
        self.saved_update = self.update
        distributed.barrier(self.ctx)

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "tokens": self.tokens,
            "skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row, "best_valid_loss": self.best_loss,
            "best_update": self.best_update, "last_valid": list(self.last_valid),
            "train_seconds": self.train_seconds, "wall_seconds": self._run_seconds(),
            "schedule_total": self.schedule_total,
            "patience_best": self.patience_best, "stale_validations": self.stale_validations,
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "model_config": self.model_config.to_dict(), "world_size": self.ctx.world_size,
        }

    def _write_run_file(self, status: str, stop_reason: str | None = None, stop_detail: str | None = None) -> None:
        run_path = self.run_dir / RUN_FILE
        previous = _read_run_file(run_path) if run_path.is_file() else {}
        atomic_write_json(run_path, {
            "format": RUN_FORMAT,
            "status": status,
            "stop_reason": stop_reason,
            "stop_detail": stop_detail,
            "early_stopping": {
                "patience": self.config.early_stop_patience, "min_delta": self.config.min_delta,
                "validations_without_improvement": self.stale_validations,
            } if self.config.early_stop_patience else None,
            # the data path resolved, so that `--resume` works from another working directory
            "train_config": dict(self.config.to_dict(), data=str(Path(self.config.data).resolve())),
            "model_config": self.model_config.to_dict(),
            "parameters": self.model.num_parameters(),
            "data": self._data_identity(),
            "updates": self.update,
            "epochs": self._epochs(),
            "tokens": self.tokens,
            "skipped_updates": self.skipped,
            "best_valid_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_valid_ppl": perplexity(self.best_loss) if math.isfinite(self.best_loss) else None,
            "best_update": self.best_update if self.best_update >= 0 else None,
            "train_seconds": round(self.train_seconds, 3),
            "tokens_per_s": round(self.tokens / self.train_seconds, 1) if self.train_seconds else None,
            "world_size": self.ctx.world_size,
            "device": self.ctx.device.type,
            "started": previous.get("started", _now()),
            "updated": _now(),
            "versions": {"gcnn": __version__, "torch": torch.__version__},
        })

    def _finish(self, reason: str) -> RunResult:
        by_signal = reason in ("SIGINT", "SIGTERM", "SIGHUP")
        if not by_signal and self.last_valid[0] != self.update:
            self._validate(step_schedule=False)
        if self.saved_update != self.update:
            self._save()
        detail = {"early_stop": self._early_stop_detail(),
                  "on_validation": "stopped by the on_validation callback (a search pruning the run)"}.get(reason)
        if self.ctx.is_main:
            self._write_run_file("stopped" if by_signal else "finished", reason, detail)
        return RunResult(
            run_dir=self.run_dir, updates=self.update, epochs=self._epochs(), tokens=self.tokens,
            train_loss=self._window.loss if self._window.tokens else self.last_train_loss,
            valid_ppl=perplexity(self.last_valid[1]),
            best_valid_ppl=perplexity(self.best_loss), skipped_updates=self.skipped,
            seconds=time.monotonic() - self.started, stop_reason=reason, stop_detail=detail,
        )

    # ------------------------------------------------------------------------------------------- helpers
    def _epochs(self) -> float:
        return self.epoch + self.batch_in_epoch / self.batches_per_epoch

    def _run_seconds(self) -> float:
        """Wall-clock seconds of the whole run so far, earlier invocations included."""
        return self.previous_seconds + time.monotonic() - self.started

    def _elapsed(self) -> float:
        return round(self._run_seconds(), 3)

    def _banner(self) -> str:
        c = self.config
        return (
            f"training {self.model_config.arch or 'custom'} ({self.model.num_parameters():,} parameters) on "
            f"{self.data.path} ({self.data.mode}, vocabulary {self.data.vocab_size:,}); {c.optimizer} lr {c.lr:g}, "
            f"batch {c.batch_size} x {c.context} tokens, {c.precision} on {self.ctx.world_size} x "
            f"{self.ctx.device.type}; {self.per_epoch} updates per epoch; "
            + ("resuming at update " + str(self.update) if self.update else "starting") + f"; run folder {self.run_dir}"
        )


class _Window:
    """Token-weighted mean loss and throughput over the updates since the last metrics line."""

    def __init__(self) -> None:
        self.nll, self.tokens, self.seconds = 0.0, 0, 0.0

    def add(self, loss: float, tokens: float, seconds: float) -> None:
        self.nll += loss * tokens
        self.tokens += int(tokens)
        self.seconds += seconds

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

