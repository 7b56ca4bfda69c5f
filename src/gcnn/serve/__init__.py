"""``gcnn serve``: an OpenAI-compatible completions API (``/v1/completions``, ``/v1/models``), per-token scores
(``/v1/score``), vLLM-style ``/tokenize`` for lm-evaluation-harness, and a page that colours every token by its
surprisal (``GET /``). Needs the ``serve`` extra (FastAPI, uvicorn): ``pip install 'gcnn[serve]'``.

``create_app(model)`` builds the application (tests drive it with FastAPI's TestClient); ``gcnn serve FOLDER`` runs
it with uvicorn. Requests share forward passes in one worker thread (:class:`~gcnn.serve.engine.Engine`).
docs/serving.md describes the API, the limits and the batching.
"""

from gcnn.serve.app import Limits, create_app, encode_text
from gcnn.serve.engine import Engine

__all__ = ["Engine", "Limits", "create_app", "encode_text"]
