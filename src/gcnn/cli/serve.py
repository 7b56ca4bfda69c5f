"""``gcnn serve``: the model behind an OpenAI-compatible completions API, with a page showing per-token surprisal."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from gcnn.cli.common import add_model_arguments, load_model

HELP = "serve a model: OpenAI-compatible /v1/completions, /v1/score and a page of per-token surprisal"
DESCRIPTION = """Serve a model over HTTP (needs the serve extra: pip install 'gcnn[serve]'):

  POST /v1/completions   OpenAI's completions API (prompt or prompts, max_tokens, temperature, top_p, top_k, n,
                         stop, seed, logprobs, echo, stream as server-sent events)
  GET  /v1/models        the model
  POST /v1/score         {"text": ...}: the JSON of `gcnn score --per-token` ("top": k adds ranks and alternatives)
  POST /tokenize         vLLM's tokenizer endpoints, which lm-evaluation-harness's local-completions uses
  GET  /health           status, queue and batch
  GET  /                 a page: every token coloured by its surprisal, and sampling

Concurrent requests share forward passes: one worker runs the generation steps of all active requests as one batch.
Binding to an address other than loopback needs --api-key-file (clients send Authorization: Bearer <key>).

example:  gcnn serve runs/shakespeare-demo --port 8000"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="file holding the API key clients must send as a Bearer token (required off loopback)")
    p.add_argument("--model-name", help="the model's id in the API (default: the folder's name)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="inference weights, as for gcnn generate (gcnn.runtime.optimize; default fp32)")
    p.add_argument("--max-batch", dest="max_rows", type=int, default=32, metavar="N",
                   help="sequences generated together (default 32)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="requests waiting beyond the batch before new ones get 429 (default 64)")
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   help="serve one request at a time (for comparison)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (default 120)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest request body (1 MiB)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, metavar="N", help="longest prompt (default 2048)")
    p.add_argument("--max-tokens", dest="max_tokens_limit", type=int, default=1024, metavar="N",
                   help="the most tokens a request may ask for (default 1024)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """ConfigError naming --host/--port when the address cannot be bound (in use, not this machine's, no such name),
    before the model is loaded."""
    import socket

    from gcnn.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def read_api_key(path: str) -> str:
    from gcnn.errors import ConfigError

    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if len(key) < 16 or any(c.isspace() for c in key):
        raise ConfigError(f"--api-key-file {path}: the key must be one line of at least 16 characters without spaces")
    return key


def run(args: argparse.Namespace) -> int:
    from gcnn.errors import ConfigError

    for name, value in (("--max-batch", args.max_rows), ("--queue-size", args.queue_size),
                        ("--max-body-bytes", args.max_body_bytes), ("--max-prompt-tokens", args.max_prompt_tokens),
                        ("--max-tokens", args.max_tokens_limit)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    api_key = read_api_key(args.api_key_file) if args.api_key_file else None
    if api_key is None and not is_loopback(args.host):
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: refusing to serve without an API key; give "
            "--api-key-file FILE (clients then send Authorization: Bearer <key>), or bind to 127.0.0.1"
        )
    try:
        import uvicorn

        from gcnn.serve import Limits, create_app
    except ImportError as exc:
        raise ConfigError(f"gcnn serve needs the serve extra ({exc.name} is missing): pip install 'gcnn[serve]'") \
            from None
    from gcnn import runtime

    check_address(args.host, args.port)
    model = load_model(args, needs_vocab="gcnn serve")
    runtime.optimize(model, args.dtype)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens_limit, timeout=args.timeout)
    name = args.model_name or Path(args.run).resolve().name
    app = create_app(model, model_name=name, limits=limits, api_key=api_key, max_rows=args.max_rows,
                     queue_size=args.queue_size, batching=args.batching)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 2
