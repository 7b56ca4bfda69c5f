"""Request bodies: read with a size limit, decoded as UTF-8, parsed as JSON and validated strictly (wrong types and
unknown fields are errors, not coerced or ignored). Every failure is a :class:`RequestError` naming the field."""

from __future__ import annotations

import json
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class RequestError(Exception):
    """A 4xx (or 5xx) answer: ``message`` names what is wrong, ``param`` the request field (or None)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Prompt = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(_Strict):
    """``POST /v1/completions``: OpenAI's legacy completions fields that gcnn implements. ``temperature`` 0 is
    greedy decoding; ``top_k`` -1 or 0 means no top-k filter; ``logprobs`` k returns each token's log-probability
    and its k most probable alternatives (0: the log-probabilities only)."""

    model: str | None = None
    prompt: Prompt
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    stream: bool = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        return value

    def prompt_list(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise RequestError("prompt: give a string, a list of strings or token ids; the list is empty", "prompt")
        if isinstance(p[0], int):
            return [list(p)]  # one prompt as token ids
        return list(p)


class ScoreRequest(_Strict):
    """``POST /v1/score``: each text scored as a sentence, as ``gcnn score --per-token`` scores a line; ``top`` k > 0
    adds each token's rank and the k tokens the model expected instead."""

    model: str | None = None
    text: str | list[str]
    top: int = Field(0, ge=0)


class TokenizeRequest(_Strict):
    """``POST /tokenize`` (vLLM's shape, which lm-eval's remote tokenizer uses)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]


async def read_body(request, max_bytes: int) -> bytes:
    """The body, refused with a 413 naming the limit as soon as it is known to be larger (from Content-Length, or
    while reading a chunked body) so that a large body is never held in memory."""
    declared = request.headers.get("content-length")
    too_large = RequestError(
        f"the request body is larger than the server's limit of {max_bytes} bytes (--max-body-bytes)", None, 413)
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise too_large
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request, model_class: type[_Strict], max_bytes: int) -> Any:
    raw = await read_body(request, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request body is not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model_class.model_validate(data)
    except ValidationError as exc:
        raise RequestError(*describe(exc)) from None


def describe(exc: ValidationError) -> tuple[str, str | None]:
    """(message, field) of the first validation error, in plain words."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # an unknown field explains most
    loc = [str(x) for x in error.get("loc", ())]
    # a union's failure location carries the tried type names: keep the field (and list indices) only
    path = [loc[0]] + [x for x in loc[1:] if x.isdigit()] if loc else []
    field = path[0] if path else None
    where = field + "".join(f"[{i}]" for i in path[1:]) if field else "body"
    if error["type"] == "extra_forbidden":
        return f"unknown field '{field}'", field
    if error["type"] == "missing":
        return f"{where}: this field is required", field
    message = error.get("msg", "invalid value")
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    return f"{where}: {message}", field
