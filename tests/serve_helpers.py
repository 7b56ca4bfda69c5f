"""What the server's tests share: a tiny model folder and a real server on a loopback port in a thread."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

from test_evaluate import make_run, word_vocab


def tiny_run(folder: Path, sentences: bool = False, arch: str = "gcnn-tiny", **overrides) -> Path:
    return make_run(folder, word_vocab(sentences), arch=arch, adaptive_cutoffs=(), **overrides)


@contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    began = time.monotonic()
    while not server.started:
        if time.monotonic() - began > 30 or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    began = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
