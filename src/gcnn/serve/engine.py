"""The worker behind the server: one thread owns the model, drains a bounded queue of requests, scores the prompts
that arrive together in one batch and runs the generation steps of every active request as one batch
(:class:`gcnn.decoding.RunningBatch`).

The HTTP side (asyncio) never touches the model: it puts a :class:`Job` on the queue (``queue.Full`` -> 429) and
waits for the events the worker sends back through the job's event loop. A job whose client has gone away or whose
deadline has passed is finished at the next step, so its rows leave the batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gcnn.decoding import BatchRow, RunningBatch, ids_to_text
from gcnn.lm import LanguageModel, inference

log = logging.getLogger("gcnn.serve")


class JobError(Exception):
    """A failure to report to the client as ``status`` with ``message`` (never a traceback)."""

    def __init__(self, status: int, message: str, kind: str = "server_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(eq=False)
class Job:
    """One request. ``kind``: ``complete`` (``prompts``: token-id lists, ``options``: for every row, ``n`` rows per
    prompt) or ``score`` (``texts``, ``top``). Events go to ``events`` on ``loop``: ``("delta", choice, piece)`` while
    streaming, then ``("done", result)`` or ``("error", JobError)``."""

    kind: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    deadline: float
    prompts: list[list[int]] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)
    prompt_ids_given: list[bool] = field(default_factory=list)
    n: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    echo: bool = False
    stream: bool = False
    want_logprobs: bool = False
    texts: list[str] = field(default_factory=list)
    top: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows: list[BatchRow] = field(default_factory=list)
    finished: bool = False

    @property
    def num_rows(self) -> int:
        return len(self.prompts) * self.n if self.kind == "complete" else 0

    def send(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the client's event loop is closed: nobody is listening
            self.cancelled.set()


@dataclass(eq=False)
class _Choice:
    """What the worker keeps for one row: the text so far and how much of it was streamed."""

    job: Job
    index: int
    prompt_index: int
    text: str = ""
    sent: int = 0


class Engine:
    """The model's one worker thread. ``max_rows``: rows generating together; ``queue_size``: requests waiting
    (beyond it, :meth:`submit` raises ``queue.Full``); ``batching=False`` serves one request at a time (the
    benchmark's baseline)."""

    def __init__(
        self,
        model: LanguageModel,
        *,
        max_rows: int = 32,
        queue_size: int = 64,
        batching: bool = True,
        score_batch_tokens: int = 16384,
    ) -> None:
        self.model = model
        self.vocab = model.vocab
        self.max_rows = max_rows
        self.batching = batching
        self.score_batch_tokens = score_batch_tokens
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.batch = RunningBatch(model)
        self.waiting: Job | None = None  # taken off the queue, waiting for room in the batch
        self.stats = {"completed": 0, "cancelled": 0, "timed_out": 0, "failed": 0, "steps": 0, "score_batches": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gcnn-serve-worker", daemon=True)

    # ---- control
    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job; ``queue.Full`` when the queue is full."""
        if self._stop.is_set():
            raise queue.Full
        self.queue.put_nowait(job)

    def snapshot(self) -> dict[str, Any]:
        return {
            "active_rows": len(self.batch),
            "queued": self.queue.qsize() + (self.waiting is not None),
            "waiting_for_room": self.waiting is not None,
            "max_rows": self.max_rows,
            "queue_size": self.queue.maxsize,
            "batching": self.batching,
            **self.stats,
        }

    # ---- the worker
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._admit()
                self._step()
            except Exception:  # pragma: no cover - a bug: fail the running jobs, keep serving
                log.exception("worker step failed")
                self._fail_all(JobError(500, "internal error while running the model"))

    def _admit(self) -> None:
        idle = len(self.batch) == 0 and self.waiting is None
        scores: list[Job] = []
        while True:
            job = self.waiting
            self.waiting = None
            if job is None:
                try:
                    job = self.queue.get(timeout=0.05) if idle and not scores else self.queue.get_nowait()
                except queue.Empty:
                    break
            if self._expired(job):
                continue
            if job.kind == "score":
                scores.append(job)
                if not self.batching:
                    break
                continue
            active = len(self.batch)
            if active and (not self.batching or active + job.num_rows > self.max_rows):
                self.waiting = job
                break
            self._start_completion(job)
            idle = False
            if not self.batching:
                break
        if scores:
            self._score(scores)

    def _expired(self, job: Job) -> bool:
        if job.cancelled.is_set():
            self.stats["cancelled"] += 1
            return True
        if time.monotonic() > job.deadline:
            self.stats["timed_out"] += 1
            job.send("error", JobError(504, "the request timed out while waiting in the queue", "timeout"))
            return True
        return False

    def _start_completion(self, job: Job) -> None:
        try:
            for p, prompt in enumerate(job.prompts):
                for i in range(job.n):
                    options = dict(job.options)
                    if options.get("seed") is not None:
                        options["seed"] = options["seed"] + p * job.n + i
                    tag = _Choice(job, p * job.n + i, p)
                    job.rows.append(self.batch.add(prompt, tag=tag, **options))
        except Exception as exc:  # options were validated by the app; anything left is ours
            job.finished = True
            self.stats["failed"] += 1
            for row in job.rows:
                self.batch.finish(row, "cancelled")
            log.exception("could not start a completion")
            job.send("error", JobError(500, f"could not start the completion ({type(exc).__name__})"))

    def _step(self) -> None:
        if len(self.batch) == 0:
            return
        now = time.monotonic()
        for row in self.batch.rows:
            job = row.tag.job
            if job.finished:
                continue
            if job.cancelled.is_set():
                self._end(job, "cancelled")
            elif now > job.deadline:
                self._end(job, "timed_out")
        updated = self.batch.step()
        self.stats["steps"] += 1
        touched: dict[int, Job] = {}
        for row in updated:
            choice: _Choice = row.tag
            if choice.job.finished:
                continue
            self._extend_text(row, choice)
            touched[id(choice.job)] = choice.job
        for job in touched.values():
            if all(row.done for row in job.rows):
                self._complete(job)

    def _extend_text(self, row: BatchRow, choice: _Choice) -> None:
        job = choice.job
        text = continuation_text(self.vocab, row.tokens, row.eos_id)
        cut = None
        for stop in job.stop:
            at = text.find(stop)
            if at >= 0 and (cut is None or at < cut):
                cut = at
        if cut is not None:
            text = text[:cut]
            self.batch.finish(row, "stop")
        choice.text = text
        if job.stream:
            # hold back what could be the start of a stop string; the rest is settled and goes out now
            hold = 0 if row.done else max((len(s) for s in job.stop), default=1) - 1
            ready = max(choice.sent, len(text) - hold)
            if ready > choice.sent:
                job.send("delta", choice.index, text[choice.sent : ready], _row_logprobs(self.vocab, row, choice))
                choice.sent = ready

    def _end(self, job: Job, why: str) -> None:
        job.finished = True
        for row in job.rows:
            self.batch.finish(row, "cancelled")
        self.stats[why] += 1
        if why == "timed_out":
            job.send("error", JobError(504, "the request timed out", "timeout"))

    def _complete(self, job: Job) -> None:
        job.finished = True
        choices = []
        for row in job.rows:
            choice: _Choice = row.tag
            text = choice.text
            prompt_text = job.prompt_texts[choice.prompt_index]
            logprobs = None
            full = (prompt_text + text) if job.echo else text
            if job.want_logprobs:
                logprobs = completion_logprobs(self.vocab, row, job.echo, job.prompt_ids_given[choice.prompt_index],
                                               full)
            choices.append(
                {
                    "text": full,
                    "index": choice.index,
                    "logprobs": logprobs,
                    "finish_reason": row.finish_reason if row.finish_reason in ("stop", "length") else "stop",
                    "_unsent": text[choice.sent :],
                }
            )
        self.stats["completed"] += 1
        job.send("done", {"choices": choices, "prompt_tokens": sum(len(p) - 1 for p in job.prompts),
                          "completion_tokens": sum(len(r.tokens) for r in job.rows)})

    def _score(self, jobs: list[Job]) -> None:
        from gcnn.serve.scoring import score_details

        texts = [t for job in jobs for t in job.texts]
        top = max(job.top for job in jobs)
        try:
            with inference(self.model):
                results = score_details(self.model, self.vocab, texts, top=top, batch_tokens=self.score_batch_tokens)
        except Exception:
            log.exception("scoring failed")
            for job in jobs:
                job.send("error", JobError(500, "internal error while scoring"))
            return
        self.stats["score_batches"] += 1
        at = 0
        for job in jobs:
            mine = results[at : at + len(job.texts)]
            at += len(job.texts)
            if job.top < top:
                for r in mine:
                    for d in r.get("token_details", []):
                        d["top"] = d["top"][: job.top]
                    if not job.top:
                        r.pop("token_details", None)
            self.stats["completed"] += 1
            job.send("done", mine)

    def _fail_all(self, error: JobError) -> None:  # pragma: no cover - only after a bug
        for row in self.batch.rows:
            job = row.tag.job
            if not job.finished:
                job.finished = True
                self.stats["failed"] += 1
                job.send("error", error)
            self.batch.finish(row, "cancelled")
        self.batch = RunningBatch(self.model)


def token_text(vocab, token: int) -> str:
    """A token as it reads in text: a BPE piece's word marker as a space, the end-of-line token as a line break."""
    if token == vocab.eos_id:
        return "\n"
    piece = vocab.itos[token]
    return piece.replace("\u2581", " ") if vocab.splitter == "bpe" else piece


def continuation_text(vocab, tokens: list[int], eos_id: int | None) -> str:
    """Generated ids as the text that continues the prompt: a word-level continuation starts with a space, a BPE
    one with a space when its first piece starts a word; a final end-of-sentence token is dropped."""
    if not tokens:
        return ""
    if eos_id is not None and tokens[-1] == eos_id:
        tokens = tokens[:-1]
        if not tokens:
            return ""
    text = ids_to_text(vocab, tokens + [vocab.eos_id])  # keep a final line break (ids_to_text drops one eos)
    first = tokens[0]
    if first == vocab.eos_id:
        return text
    if vocab.splitter != "bpe" or vocab.itos[first].startswith("\u2581"):
        return " " + text
    return text


def _row_logprobs(vocab, row: BatchRow, choice: _Choice) -> dict[str, Any] | None:
    if not choice.job.want_logprobs or not row.tokens:
        return None
    return {
        "tokens": [vocab.itos[row.tokens[-1]]],
        "token_logprobs": [row.logprobs[-1]],
        "top_logprobs": [{vocab.itos[t]: lp for t, lp in row.top[-1]}] if row.top_logprobs else None,
    }


def completion_logprobs(vocab, row: BatchRow, echo: bool, ids_given: bool = False, text: str = "") -> dict[str, Any]:
    """OpenAI's ``logprobs`` object: tokens, their log-probabilities, the top alternatives and their offsets in the
    returned text. With ``echo`` the prompt's tokens come first: for a text prompt, its tokens after the start marker
    (which is not part of the text, so every echoed token has a log-probability); for a prompt given as token ids,
    every id, the first with log-probability None (nothing came before it), as OpenAI's API does."""
    tokens: list[int] = []
    lps: list[float | None] = []
    tops: list[list[tuple[int, float]] | None] = []
    if echo and row.prompt_logprobs is not None:
        if ids_given:
            tokens.append(row.prompt[0])
            lps.append(None)
            tops.append(None)
        tokens += row.prompt[1:]
        lps += [lp for lp, _ in row.prompt_logprobs]
        tops += [alt for _, alt in row.prompt_logprobs]
    tokens += row.tokens
    lps += row.logprobs
    tops += row.top
    offsets, at = [], 0
    for t in tokens:  # where each token starts in the returned text (where it can be found in order)
        piece = token_text(vocab, t).strip(" ") if t != vocab.eos_id else "\n"
        found = text.find(piece, at) if piece else -1
        offsets.append(found if found >= 0 else at)
        if found >= 0:
            at = found + len(piece)
    return {
        "tokens": [vocab.itos[t] for t in tokens],
        "token_logprobs": lps,
        "top_logprobs": [None if alt is None else {vocab.itos[t]: lp for t, lp in alt} for alt in tops]
        if row.top_logprobs else None,
        "text_offset": offsets,
    }
