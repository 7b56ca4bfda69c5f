"""The page of gcnn serve in a real browser: headless Chromium from the OS's packages (apt-get install chromium;
.ci/run installs it), driven by Playwright without a browser download. It scores a text, colours each token by its
surprisal, shows the tooltip of /v1/score's numbers, and streams a sampled continuation.

GCNN_SCREENSHOT=PATH also writes the screenshot there (docs/serve-page.png is made that way, with a trained model:
GCNN_SCREENSHOT_MODEL=FOLDER)."""

import math
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="gcnn serve needs the serve extra (pip install 'gcnn[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs playwright (pip install playwright)")

import httpx  # noqa: E402

from gcnn.io import load  # noqa: E402
from gcnn.serve import create_app  # noqa: E402
from serve_helpers import live_server, tiny_run  # noqa: E402

CHROMIUM = os.environ.get("GCNN_CHROMIUM", "/usr/bin/chromium")
TEXT = "the cat sat on a mat\na dog ran far away from the big red house"


def colour_of(style: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in re.findall(r"\d+", style)[:3])


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_page_scores_colours_tooltips_and_samples(tmp_path, browser):
    folder = os.environ.get("GCNN_SCREENSHOT_MODEL")
    model = load(folder) if folder else load(tiny_run(tmp_path / "run"))
    text = os.environ.get("GCNN_SCREENSHOT_TEXT", TEXT)
    app = create_app(model, model_name=Path(folder).name if folder else "tiny")
    with live_server(app) as base:
        expected = httpx.post(base + "/v1/score", json={"text": text.split("\n"), "top": 5}).json()["results"]
        details = [d for r in expected for d in r["token_details"]]
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.fill("#text", text)
        page.click("#score")
        page.wait_for_function(f"document.querySelectorAll('#tokens .tok').length === {len(details)}")
        tokens = page.locator("#tokens .tok")
        # each token: its text, its log-probability, its colour (green = expected, red = surprising)
        shown = tokens.evaluate_all("els => els.map(e => [e.textContent, +e.dataset.logprob, +e.dataset.rank,"
                                    " getComputedStyle(e).backgroundColor])")
        for (label, logprob, rank, _), d in zip(shown, details):
            assert label == ("\u21b5" if d["token"] == model.vocab.eos else d["text"])
            assert logprob == pytest.approx(d["logprob"], abs=1e-9) and rank == d["rank"]
        order = sorted(range(len(shown)), key=lambda i: shown[i][1])  # most surprising first
        red_most, red_least = colour_of(shown[order[0]][3]), colour_of(shown[order[-1]][3])
        if shown[order[0]][1] < shown[order[-1]][1] - 0.5:  # clearly different surprisals: clearly different hues
            assert red_most[0] - red_most[1] > red_least[0] - red_least[1]
        total = sum(d["logprob"] for d in details)
        assert float(page.inner_text("#ppl")) == pytest.approx(math.exp(-total / len(details)), rel=1e-3)
        # hover: probability, rank and the top 5 alternatives of /v1/score
        for i in (1, len(details) // 2):
            tokens.nth(i).hover()
            tip = page.locator("#tooltip")
            tip.wait_for(state="visible")
            d = details[i]
            prob = float(tip.locator(".tip-prob").inner_text())
            assert prob == pytest.approx(math.exp(d["logprob"]), rel=1e-3)
            assert int(tip.locator(".tip-rank").inner_text()) == d["rank"]
            rows = tip.locator("tr.alt").evaluate_all("els => els.map(e => [...e.cells].map(c => c.textContent))")
            assert [r[0] for r in rows] == [t.replace("\u2581", " ") for t, _ in d["top"]]
            assert [float(r[1]) for r in rows] == pytest.approx([math.exp(lp) for _, lp in d["top"]], rel=1e-3)
            running = math.exp(-sum(x["logprob"] for x in details[: i + 1]) / (i + 1))
            assert float(tip.locator(".tip-ppl").inner_text()) == pytest.approx(running, rel=1e-3)
        shot = tmp_path / "serve-page.png"
        # sample a continuation, streamed (greedy, so that it can be checked against the API)
        page.fill("#temperature", "0")
        page.fill("#maxtokens", "12")
        page.click("#sample")
        page.wait_for_selector("#sample-out[data-done='1']", timeout=30000)
        continuation = page.inner_text("#continuation")
        greedy = httpx.post(base + "/v1/completions",
                            json={"prompt": text, "max_tokens": 12, "temperature": 0}).json()["choices"][0]["text"]
        assert continuation.strip() == greedy.strip() and continuation.strip()
        if os.environ.get("GCNN_SCREENSHOT"):  # for the picture: a sampled continuation, the most surprising token
            page.fill("#temperature", "0.8")
            page.fill("#maxtokens", "30")
            page.click("#sample")
            page.wait_for_selector("#sample-out[data-done='1']", timeout=30000)
        tokens.nth(order[0] if os.environ.get("GCNN_SCREENSHOT") else min(3, len(details) - 1)).hover()
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10000 and not errors, errors
        if os.environ.get("GCNN_SCREENSHOT"):
            shutil.copy(shot, os.environ["GCNN_SCREENSHOT"])
