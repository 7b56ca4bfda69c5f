"""The HTTP side of ``gcnn serve``: an OpenAI-compatible completions API, per-token scores and the page.

``create_app(model, ...)`` builds the FastAPI application around one loaded model (with its vocabulary); the model
runs in the :class:`~gcnn.serve.engine.Engine`'s worker thread. Every request body is read here (with a size
limit), decoded as UTF-8, parsed as JSON and validated field by field, so that every bad request is a 4xx with a
JSON error naming what is wrong, in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; nothing
else ever reaches a client (an unexpected failure is a 500 with a one-line message, its traceback in the log).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gcnn.lm import LanguageModel
from gcnn.serve.engine import Engine, Job, JobError
from gcnn.serve.schemas import (
    CompletionRequest,
    DetokenizeRequest,
    RequestError,
    ScoreRequest,
    TokenizeRequest,
    parse_body,
)

log = logging.getLogger("gcnn.serve")


@dataclass
class Limits:
    """What one request may ask for; each limit is enforced with a 4xx naming it (and the server's option)."""

    max_body_bytes: int = 1 << 20  # --max-body-bytes
    max_prompt_tokens: int = 2048  # --max-prompt-tokens (per prompt or scored text, start marker excluded)
    max_tokens: int = 1024  # --max-tokens: the most a request's max_tokens may be
    max_n: int = 16  # completions per prompt
    max_prompts: int = 256  # prompts (or texts, or the page's lines) per request
    max_logprobs: int = 20  # alternatives per token
    timeout: float = 120.0  # --timeout: seconds from arrival to the last byte of the answer


OPEN_PATHS = ("/", "/health")  # the only paths that need no API key (the page asks for one when the API does)


def encode_text(vocab, text: str) -> list[int]:
    """A text's ids as a prepared corpus holds them: each line's tokens, and an end-of-line token (``<eos>``, or
    ``</s>`` then ``<s>`` for sentence vocabularies) at each line break. Unknown words become ``<unk>``."""
    specials = {vocab.eos: vocab.eos_id, vocab.unk: vocab.unk_id}
    if vocab.bos is not None:
        specials[vocab.bos] = vocab.bos_id
    if text in specials:
        return [specials[text]]
    ids: list[int] = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids += vocab.encode(vocab.tokenize(line))
        if i < len(lines) - 1:
            ids.append(vocab.eos_id)
            if vocab.bos_id is not None:
                ids.append(vocab.bos_id)
    return ids


def decode_ids(vocab, ids: list[int]) -> str:
    """Ids as text: lines joined by line breaks at each end-of-line token (a ``<s>`` after it dropped)."""
    lines: list[list[int]] = [[]]
    for i in ids:
        if i == vocab.eos_id:
            lines.append([])
        elif i != vocab.bos_id or lines[-1]:
            lines[-1].append(i)
    return "\n".join(vocab.detokenize(vocab.decode(line)) for line in lines)


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def create_app(
    model: LanguageModel,
    *,
    model_name: str = "gcnn",
    limits: Limits | None = None,
    api_key: str | None = None,
    max_rows: int = 32,
    queue_size: int = 64,
    batching: bool = True,
) -> FastAPI:
    """The application for ``model`` (which needs its vocabulary, ``model.vocab``). ``api_key``: when set, every
    request but the page's and ``/health``'s must carry ``Authorization: Bearer <key>`` (compared in constant time).
    ``max_rows``, ``queue_size``, ``batching``: the engine's (see :class:`Engine`)."""
    if model.vocab is None:
        raise ValueError("the model has no vocabulary: load it with gcnn.load (or pass vocab=)")
    limits = replace(limits or Limits())
    limit = getattr(model.config, "max_len", None)  # a Transformer's positions
    if limit is not None:
        limits.max_prompt_tokens = min(limits.max_prompt_tokens, limit - 1)
    engine = Engine(model, max_rows=max_rows, queue_size=queue_size, batching=batching)
    vocab = model.vocab
    started = int(time.time())

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="gcnn serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.limits = limits
    key = None if api_key is None else api_key.encode()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if key is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)):
                return error_response(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                      "authentication_error")
        try:
            return await call_next(request)
        except Exception:  # noqa: BLE001 - nothing but a one-line message reaches a client
            log.exception("unhandled error on %s", request.url.path)
            return error_response(500, "internal server error", "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.kind, exc.param)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error", "server_error")

    # ---- endpoints
    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("gcnn.serve").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **engine.snapshot()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(model, model_name, started)]}

    @app.post("/v1/score")
    async def score(request: Request):
        body = await parse_body(request, ScoreRequest, limits.max_body_bytes)
        texts = [body.text] if isinstance(body.text, str) else list(body.text)
        if not texts:
            raise RequestError("text: give a string or a non-empty list of strings", "text")
        if len(texts) > limits.max_prompts:
            raise RequestError(f"text: at most {limits.max_prompts} texts per request, got {len(texts)}", "text")
        if body.top > limits.max_logprobs:
            raise RequestError(f"top: at most {limits.max_logprobs}, got {body.top}", "top")
        for i, text in enumerate(texts):
            n = len(vocab.tokenize(text)) + 1
            if n > limits.max_prompt_tokens:
                where = "text" if len(texts) == 1 else f"text[{i}]"
                raise RequestError(
                    f"{where}: {n} tokens (with the end-of-line token), more than the server's limit of "
                    f"{limits.max_prompt_tokens} (--max-prompt-tokens)", "text")
        job = new_job("score", texts=texts, top=body.top)
        results = await run_job(job)
        return {"object": "score", "model": model_name,
                "results": [{"line": i + 1, **r} for i, r in enumerate(results)]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse_body(request, CompletionRequest, limits.max_body_bytes)
        job = completion_job(body)
        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            submit(job)
            return StreamingResponse(stream_events(job, cid, created), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await run_job(job)
        return {
            "id": cid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{k: v for k, v in c.items() if not k.startswith("_")} for c in result["choices"]],
            "usage": usage(result),
        }

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {"eos_token": vocab.eos, "bos_token": vocab.bos, "pad_token": None, "unk_token": vocab.unk,
                "model_max_length": limits.max_prompt_tokens + 1, "vocab_size": len(vocab), "chat_template": None}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await parse_body(request, TokenizeRequest, limits.max_body_bytes)
        tokens = encode_text(vocab, body.prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": limits.max_prompt_tokens + 1}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await parse_body(request, DetokenizeRequest, limits.max_body_bytes)
        bad = next((t for t in body.tokens if not 0 <= t < len(vocab)), None)
        if bad is not None:
            raise RequestError(f"tokens: id {bad} is outside the vocabulary of {len(vocab)}", "tokens")
        return {"prompt": decode_ids(vocab, body.tokens)}

    # ---- helpers
    def new_job(kind: str, **fields: Any) -> Job:
        loop = asyncio.get_running_loop()
        return Job(kind, loop, asyncio.Queue(), time.monotonic() + limits.timeout, **fields)

    def submit(job: Job) -> None:
        engine.start()
        try:
            engine.submit(job)
        except queue.Full:
            raise RequestError(
                f"the server is busy: {engine.queue.maxsize} requests are already waiting (--queue-size); retry later",
                None, 429) from None

    async def next_event(job: Job):
        remaining = job.deadline - time.monotonic() + 1.0  # the worker reports timeouts itself; this is a backstop
        try:
            return await asyncio.wait_for(job.events.get(), timeout=max(remaining, 0.01))
        except asyncio.TimeoutError:
            job.cancelled.set()
            return ("error", JobError(504, f"the request timed out after {limits.timeout:g} s (--timeout)", "timeout"))

    async def run_job(job: Job):
        submit(job)
        try:
            while True:
                event = await next_event(job)
                if event[0] == "done":
                    return event[1]
                if event[0] == "error":
                    err: JobError = event[1]
                    raise RequestError(err.message, None, err.status, err.kind)
        finally:
            job.cancelled.set()  # a no-op once done; frees the rows of a request whose client went away

    async def stream_events(job: Job, cid: str, created: int):
        def chunk(choices):
            return "data: " + json.dumps({"id": cid, "object": "text_completion", "created": created,
                                          "model": model_name, "choices": choices}, ensure_ascii=False) + "\n\n"

        try:
            while True:
                event = await next_event(job)
                if event[0] == "delta":
                    _, index, piece, logprobs = event
                    yield chunk([{"text": piece, "index": index, "logprobs": logprobs, "finish_reason": None}])
                elif event[0] == "done":
                    result = event[1]
                    for c in result["choices"]:
                        yield chunk([{"text": c["_unsent"], "index": c["index"], "logprobs": None,
                                      "finish_reason": c["finish_reason"]}])
                    yield "data: [DONE]\n\n"
                    return
                else:
                    err: JobError = event[1]
                    yield "data: " + json.dumps({"error": {"message": err.message, "type": err.kind, "param": None,
                                                           "code": None}}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
        finally:
            job.cancelled.set()  # the client left (or the stream ended): the rows leave the batch at the next step

    def completion_job(body: CompletionRequest) -> Job:
        prompts = body.prompt_list()
        if len(prompts) > limits.max_prompts:
            raise RequestError(f"prompt: at most {limits.max_prompts} prompts per request, got {len(prompts)}",
                               "prompt")
        if body.max_tokens > limits.max_tokens:
            raise RequestError(f"max_tokens: at most {limits.max_tokens} (the server's --max-tokens), got "
                               f"{body.max_tokens}", "max_tokens")
        if body.n > limits.max_n:
            raise RequestError(f"n: at most {limits.max_n}, got {body.n}", "n")
        if body.logprobs is not None and body.logprobs > limits.max_logprobs:
            raise RequestError(f"logprobs: at most {limits.max_logprobs}, got {body.logprobs}", "logprobs")
        if len(prompts) * body.n > max_rows:
            raise RequestError(f"n x prompts = {len(prompts) * body.n} rows, more than the server's batch of "
                               f"{max_rows} (--max-batch)", "n")
        if body.stream and body.echo:
            raise RequestError("echo: not supported with stream", "echo")
        start = vocab.eos_id if vocab.bos_id is None else vocab.bos_id
        ids, texts, given = [], [], []
        for i, prompt in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if isinstance(prompt, str):
                tokens = [start] + encode_text(vocab, prompt)  # read after the start marker, which is not echoed
                texts.append(prompt)
            else:  # token ids are read exactly as given
                if not prompt:
                    raise RequestError(f"{where}: an empty list of token ids", "prompt")
                bad = next((t for t in prompt if not 0 <= t < len(vocab)), None)
                if bad is not None:
                    raise RequestError(f"{where}: token id {bad} is outside the vocabulary of {len(vocab)}", "prompt")
                tokens = list(prompt)
                texts.append(decode_ids(vocab, tokens))
            given.append(not isinstance(prompt, str))
            if len(tokens) - 1 > limits.max_prompt_tokens:
                raise RequestError(f"{where}: {len(tokens) - 1} tokens, more than the server's limit of "
                                   f"{limits.max_prompt_tokens} (--max-prompt-tokens)", "prompt")
            if limit is not None and len(tokens) + body.max_tokens > limit:
                raise RequestError(f"max_tokens: the prompt's {len(tokens)} tokens + {body.max_tokens} exceed the "
                                   f"{limit} positions this model takes (max_len)", "max_tokens")
            ids.append(tokens)
        greedy = body.temperature == 0
        banned = tuple(i for i in (vocab.bos_id, vocab.unk_id) if i is not None)
        options = dict(
            max_tokens=body.max_tokens, greedy=greedy, temperature=1.0 if greedy else body.temperature,
            top_k=None if body.top_k in (None, -1, 0) else body.top_k, top_p=None if body.top_p >= 1 else body.top_p,
            eos_id=vocab.eos_id if vocab.bos_id is not None else None, banned_ids=banned, seed=body.seed,
            top_logprobs=body.logprobs or 0, want_prompt_logprobs=body.echo and body.logprobs is not None,
        )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return new_job("complete", prompts=ids, prompt_texts=texts, prompt_ids_given=given, n=body.n, options=options, stop=stop,
                       echo=body.echo, stream=body.stream, want_logprobs=body.logprobs is not None)

    return app


def usage(result: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}


def model_card(model: LanguageModel, name: str, created: int) -> dict[str, Any]:
    vocab = model.vocab
    return {
        "id": name, "object": "model", "created": created, "owned_by": "gcnn",
        "model_type": getattr(model.config, "model_type", type(model).__name__),
        "vocab_size": model.vocab_size, "splitter": vocab.splitter,
        "receptive_field": model.receptive_field, "parameters": model.num_parameters(),
        "start_marker": vocab.bos if vocab.bos is not None else vocab.eos,
    }
