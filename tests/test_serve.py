"""gcnn serve: the running batch (rows joining and leaving) against one-at-a-time generation for every model type;
the API against the library (completions, echo/logprobs, streaming, scores, tokenizer endpoints); every limit
(body size, prompt length, max_tokens, the bounded queue, the timeout, a client leaving mid-stream); API keys; bad
requests; and `gcnn serve` itself on a loopback port."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="gcnn serve needs the serve extra (pip install 'gcnn[serve]')")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import gcnn  # noqa: E402
from gcnn.cli import main  # noqa: E402
from gcnn.decoding import RunningBatch, generate, generate_steps, generate_text  # noqa: E402
from gcnn.evaluate import score_texts  # noqa: E402
from gcnn.io import load  # noqa: E402
from gcnn.serve import Limits, create_app, encode_text  # noqa: E402
from serve_helpers import live_server, tiny_run, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load(tiny_run(tmp_path_factory.mktemp("serve") / "run"))


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, model_name="tiny")) as c:
        yield c


# ---------------------------------------------------------------------------------------------------- the batch
@pytest.mark.parametrize("arch", ["gcnn-tiny", "lstm-tiny", "transformer-tiny"])
def test_rows_joining_and_leaving_decode_as_alone(arch):
    """Rows added at different steps, with different prompt lengths, options and seeds, get exactly the tokens
    they get when generated alone (greedy ones: generate's; sampled ones: alone in a batch with the same seed); a row
    finished by the caller leaves; the GCNN and LSTM share one forward call per step whatever the rows' positions,
    the Transformer one per position."""
    torch.manual_seed(0)
    m = gcnn.build_model(arch, vocab_size=50).eval()
    specs = [
        ([1, 5, 7], dict(greedy=True)),
        ([1, 9], dict(temperature=0.8, top_k=5, seed=3)),
        ([1, 4, 4, 4, 2], dict(top_p=0.9, seed=11)),
        ([1, 5, 7], dict(greedy=True)),
        ([1, 30, 2, 8], dict(temperature=1.3, seed=5)),
    ]

    def alone(prompt, options):
        if options.get("greedy"):
            return generate(m, [prompt], max_tokens=7, **options)[0]
        batch = RunningBatch(m)
        row = batch.add(prompt, max_tokens=7, **options)
        while len(batch):
            batch.step()
        return row.tokens

    expected = [alone(p, o) for p, o in specs]
    batch = RunningBatch(m)
    rows = [batch.add(p, max_tokens=7, **o) for p, o in specs[:2]]
    batch.step()
    batch.step()
    rows.append(batch.add(specs[2][0], max_tokens=7, **specs[2][1]))
    batch.step()
    rows += [batch.add(p, max_tokens=7, **o) for p, o in specs[3:]]
    calls_before = batch.forward_calls
    batch.step()  # the three running rows and two new ones (different prompt lengths)
    calls = batch.forward_calls - calls_before
    quitter = batch.add([1, 3, 3], max_tokens=7, greedy=True)
    batch.step()
    batch.finish(quitter, "cancelled")
    while len(batch):
        batch.step()
    assert [r.tokens for r in rows] == expected
    assert all(r.finish_reason == "length" for r in rows)
    assert quitter.finish_reason == "cancelled" and len(quitter.tokens) == 1
    if arch == "transformer-tiny":
        assert calls == 4  # one call for running rows at each of two positions... and the two new prompt lengths
    else:
        assert calls == 3  # one step call for every running row, one per new prompt length


def test_sample_row_draws_from_the_filtered_distribution():
    from gcnn.decoding import sample_row

    log_probs = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_row(log_probs, g) for _ in range(4000)])
    shares = torch.bincount(draws, minlength=4).double() / 4000
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.double), atol=0.03)
    assert set(sample_row(log_probs, g, top_k=2) for _ in range(200)) == {0, 1}
    assert set(sample_row(log_probs, g, top_p=0.6) for _ in range(200)) == {0, 1}
    sharp = torch.tensor([sample_row(log_probs, g, temperature=0.2) for _ in range(500)])
    assert (sharp == 0).double().mean() > 0.9


def test_batch_logprobs_and_eos_stop():
    torch.manual_seed(0)
    m = gcnn.build_model("gcnn-tiny", vocab_size=50, adaptive_cutoffs=()).eval()
    batch = RunningBatch(m)
    (first,) = next(generate_steps(m, [[1, 2, 3]], max_tokens=1, greedy=True))
    row = batch.add([1, 2, 3], max_tokens=5, greedy=True, top_logprobs=3, want_prompt_logprobs=True, eos_id=first)
    batch.step()
    assert row.finish_reason == "stop" and row.tokens == [first]  # generated eos_id: done at once
    with torch.no_grad():
        lp = m.next_token_log_probs(torch.tensor([[1, 2, 3]]))[0]
    assert row.logprobs[0] == pytest.approx(float(lp[2, first]), abs=1e-5)
    assert [t for t, _ in row.top[0]] == lp[2].topk(3).indices.tolist()
    assert [p for p, _ in row.prompt_logprobs] == pytest.approx([float(lp[0, 2]), float(lp[1, 3])], abs=1e-5)


@pytest.mark.parametrize("arch", ["gcnn-tiny", "lstm-tiny", "transformer-tiny"])
def test_cache_stack_and_select(arch):
    torch.manual_seed(0)
    m = gcnn.build_model(arch, vocab_size=30).eval()
    a, b = m.new_cache(2), m.new_cache(1)
    with torch.no_grad():
        m.hidden_states(torch.tensor([[1, 2, 3], [4, 5, 6]]), a)
        m.hidden_states(torch.tensor([[7, 8, 9]]), b)
        both = type(a).stack([a, b])
        assert both.batch_size == 3
        step = torch.tensor([[1], [2], [3]])
        out = m.hidden_states(step, both)
        alone = m.hidden_states(step[2:], b)
        assert torch.allclose(out[2:], alone, atol=1e-5)
        picked = both.select(torch.tensor([1]))
        assert picked.batch_size == 1
        row = a.select(torch.tensor([1]))  # row 1 of a, fed the same step token as in `both`
        m.hidden_states(torch.tensor([[2]]), row)
        torch.testing.assert_close(m.hidden_states(torch.tensor([[4]]), picked),
                                   m.hidden_states(torch.tensor([[4]]), row), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- the API
def test_models_and_health(client, model):
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny" and card["vocab_size"] == model.vocab_size and card["receptive_field"] == 7
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["active_rows"] == 0 and health["queue_size"] == 64


def test_greedy_completion_is_generate_text(client, model):
    prompts = ["the cat sat", "a dog"]
    r = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    expected = generate_text(model, model.vocab, prompts, max_tokens=6, greedy=True, allow_unk=False)
    got = [c["text"] for c in sorted(body["choices"], key=lambda c: c["index"])]
    assert [g.strip(" ").removesuffix("\n") for g in got] == expected
    assert all(g.startswith(" ") or g.startswith("\n") for g in got)  # a word-level continuation starts a word
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    assert all(c["finish_reason"] == "length" for c in body["choices"])


def test_sampling_seed_n_and_stop(client):
    ask = {"prompt": "the", "max_tokens": 12, "temperature": 1.0, "top_k": 8, "top_p": 0.95, "n": 3, "seed": 7}
    one = client.post("/v1/completions", json=ask).json()["choices"]
    two = client.post("/v1/completions", json=ask).json()["choices"]
    assert [c["text"] for c in one] == [c["text"] for c in two]  # seed: reproducible
    assert len({c["text"] for c in one}) > 1  # the n choices differ (seed + index)
    text = one[0]["text"]
    words = text.split()
    stop = words[2]
    stopped = client.post("/v1/completions", json={**ask, "stop": [stop]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == text[: text.index(stop)]


def test_logprobs_and_echo_against_direct_computation(client, model):
    vocab = model.vocab
    r = client.post("/v1/completions",
                    json={"prompt": "the cat sat", "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True})
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    prompt_ids = [vocab.eos_id] + vocab.encode("the cat sat".split())
    generated = [vocab.stoi[t] for t in lp["tokens"][3:]]
    ids = prompt_ids + generated
    with torch.no_grad():
        dist = model.next_token_log_probs(torch.tensor([ids]))[0]
    expected = [float(dist[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert lp["tokens"][:3] == ["the", "cat", "sat"]
    assert lp["token_logprobs"] == pytest.approx(expected, abs=1e-4)
    for i, alternatives in enumerate(lp["top_logprobs"]):
        best = dist[i].topk(2)
        assert list(alternatives) == [vocab.itos[j] for j in best.indices.tolist()]
    assert choice["text"].startswith("the cat sat ")
    assert lp["text_offset"][:3] == [0, 4, 8]
    # echo of the prompt only (what lm-eval's loglikelihood sends), agreeing with gcnn score
    scored = next(score_texts(model, vocab, ["the cat sat"], per_token=True))
    r = client.post("/v1/completions", json={"prompt": "the cat sat", "max_tokens": 0, "echo": True, "logprobs": 0})
    echoed = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert echoed == pytest.approx([lp for _, lp in scored.token_logprobs[:3]], abs=1e-5)


def test_token_id_prompts_are_read_as_given(client, model):
    vocab = model.vocab
    ids = [vocab.eos_id] + vocab.encode("the cat".split())
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1,
                                             "temperature": 0})
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"][:3] == [vocab.eos, "the", "cat"] and lp["token_logprobs"][0] is None
    text = client.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 0, "echo": True, "logprobs": 0})
    assert lp["token_logprobs"][1:3] == pytest.approx(text.json()["choices"][0]["logprobs"]["token_logprobs"],
                                                      abs=1e-6)
    batch = client.post("/v1/completions", json={"prompt": [ids, ids[:2]], "max_tokens": 2, "temperature": 0})
    assert len(batch.json()["choices"]) == 2


def test_stream_is_the_same_text(client):
    ask = {"prompt": "the cat", "max_tokens": 10, "temperature": 0.9, "seed": 3, "n": 2}
    whole = client.post("/v1/completions", json=ask).json()["choices"]
    pieces = {0: "", 1: ""}
    finish = {}
    with client.stream("POST", "/v1/completions", json={**ask, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        for c in json.loads(event)["choices"]:
            pieces[c["index"]] += c["text"]
            if c["finish_reason"]:
                finish[c["index"]] = c["finish_reason"]
    assert len(events) > 5  # token by token, not one chunk
    assert pieces == {c["index"]: c["text"] for c in whole}
    assert finish == {0: "length", 1: "length"}


def test_score_is_gcnn_score_per_token(client, model):
    texts = ["the cat sat on a mat", "a zebra ran far", ""]
    r = client.post("/v1/score", json={"text": texts, "top": 5})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = list(score_texts(model, model.vocab, texts, per_token=True))
    for i, (got, want) in enumerate(zip(results, expected)):
        assert got["line"] == i + 1
        for key, value in want.to_dict().items():
            if key == "token_logprobs":
                assert [t for t, _ in got[key]] == [t for t, _ in value]
                assert [lp for _, lp in got[key]] == pytest.approx([lp for _, lp in value], abs=1e-5)
            else:
                assert got[key] == pytest.approx(value, rel=1e-5), key
        oov = [w not in model.vocab.stoi for w in texts[i].split()]
        assert [d["oov"] for d in got["token_details"]] == oov + [False]
        for detail in got["token_details"]:
            tops = [lp for _, lp in detail["top"]]
            assert tops == sorted(tops, reverse=True) and len(tops) == 5
            rank = detail["rank"]
            assert (rank == 1) == (detail["logprob"] >= tops[0] - 1e-6)
            if rank <= 5:
                assert detail["top"][rank - 1][1] == pytest.approx(detail["logprob"], abs=1e-6)
            else:
                assert detail["logprob"] < tops[-1]
    plain = client.post("/v1/score", json={"text": "the cat"}).json()["results"][0]
    assert "token_details" not in plain and plain["tokens"] == 3


def test_tokenizer_endpoints(client, model):
    vocab = model.vocab
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == vocab.eos and info["bos_token"] is None
    ids = client.post("/tokenize", json={"prompt": "the cat\nsat zebra", "add_special_tokens": False}).json()["tokens"]
    assert ids == vocab.encode(["the", "cat"]) + [vocab.eos_id] + vocab.encode(["sat"]) + [vocab.unk_id]
    assert ids == encode_text(vocab, "the cat\nsat zebra")
    assert client.post("/tokenize", json={"prompt": vocab.eos}).json()["tokens"] == [vocab.eos_id]
    text = client.post("/detokenize", json={"tokens": ids[:4]}).json()["prompt"]
    assert text == "the cat\nsat"


@pytest.mark.parametrize("arch", ["lstm-tiny", "transformer-tiny"])
def test_the_baselines_serve_too(tmp_path, arch):
    model = load(tiny_run(tmp_path / "run", arch=arch))
    prompts = ["the cat sat", "a", "big red house on"]
    with TestClient(create_app(model)) as c:
        r = c.post("/v1/completions", json={"prompt": prompts, "max_tokens": 5, "temperature": 0})
        got = [ch["text"] for ch in sorted(r.json()["choices"], key=lambda ch: ch["index"])]
        expected = generate_text(model, model.vocab, prompts, max_tokens=5, greedy=True, allow_unk=False)
        # the API keeps a final line break (an <eos> generated last), which generate_text drops
        assert [g.strip(" ").removesuffix("\n") for g in got] == expected
        scored = c.post("/v1/score", json={"text": prompts}).json()["results"]
        expected = list(score_texts(model, model.vocab, prompts))
        assert [s["logprob"] for s in scored] == pytest.approx([e.logprob for e in expected], rel=1e-5)
        if arch.startswith("transformer"):
            limit = model.config.max_len
            r = c.post("/v1/completions", json={"prompt": "the", "max_tokens": limit})
            assert r.status_code == 400 and f"{limit} positions" in r.json()["error"]["message"]


def test_sentence_vocabulary_stops_at_the_end_of_sentence(tmp_path):
    model = load(tiny_run(tmp_path / "run", sentences=True))
    vocab = model.vocab
    with TestClient(create_app(model)) as c:
        r = c.post("/v1/completions", json={"prompt": ["the cat", "a"], "max_tokens": 40, "temperature": 0})
        choices = sorted(r.json()["choices"], key=lambda ch: ch["index"])
        expected = generate_text(model, vocab, ["the cat", "a"], max_tokens=40, greedy=True, allow_unk=False)
        assert [ch["text"].strip(" ") for ch in choices] == expected
        for ch, text in zip(choices, expected):  # </s> ends a completion (and is not part of its text)
            assert ch["finish_reason"] == ("length" if len(text.split()) == 40 else "stop")
        assert c.post("/tokenize", json={"prompt": "a\nb"}).json()["tokens"] == \
            vocab.encode(["a"]) + [vocab.eos_id, vocab.bos_id] + vocab.encode(["b"])


def test_a_bpe_model(tmp_path):
    pytest.importorskip("tokenizers", reason="BPE vocabularies need the bpe extra: pip install -e '.[bpe]'")
    from gcnn.data import find_corpus, prepare

    folder = tmp_path / "corpus"
    folder.mkdir()
    text = "the quick brown fox jumps over the lazy dog\nthe dog barks at the fox\n" * 20
    for split, body in (("train", text), ("valid", "the lazy fox\n"), ("test", "a quick dog\n")):
        (folder / f"wiki.{split}.tokens").write_text(body)
    vocab = prepare(find_corpus(folder), tmp_path / "data", bpe=60).vocab
    from test_evaluate import make_run

    model = load(make_run(tmp_path / "run", vocab, adaptive_cutoffs=()))
    with TestClient(create_app(model)) as c:
        details = c.post("/v1/score", json={"text": "the lazy fox", "top": 3}).json()["results"][0]["token_details"]
        assert "".join(d["text"] for d in details[:-1]).strip() == "the lazy fox"
        assert all(d["token"] in vocab.stoi for d in details)
        ids = c.post("/tokenize", json={"prompt": "the lazy fox"}).json()["tokens"]
        assert c.post("/detokenize", json={"tokens": ids}).json()["prompt"] == "the lazy fox"
        ask = {"prompt": "the quick", "max_tokens": 8, "temperature": 0}
        whole = c.post("/v1/completions", json=ask).json()["choices"][0]["text"]
        expected = generate_text(model, vocab, "the quick", max_tokens=8, greedy=True, allow_unk=False)[0]
        assert whole.strip() == expected.strip()
        with c.stream("POST", "/v1/completions", json={**ask, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert "".join(ch["text"] for e in events for ch in e["choices"]) == whole


# ---------------------------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{", 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "not valid UTF-8"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"max_tokens": 3}).encode(), 400, "prompt: this field is required"),
        (json.dumps({"prompt": 3}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "a", "max_tokens": "3"}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "a", "max_tokens": True}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "a", "temperature": -1}).encode(), 400, "temperature"),
        (json.dumps({"prompt": "a", "top_p": 0}).encode(), 400, "top_p"),
        (json.dumps({"prompt": "a", "frequency_penalty": 1}).encode(), 400, "unknown field 'frequency_penalty'"),
        (json.dumps({"prompt": "a", "stop": [""]}).encode(), 400, "stop"),
        (json.dumps({"prompt": [], "max_tokens": 1}).encode(), 400, "prompt"),
        (json.dumps({"prompt": [99999]}).encode(), 400, "token id 99999"),
        (json.dumps({"prompt": "a", "max_tokens": 5000}).encode(), 400, "max_tokens: at most 1024"),
        (json.dumps({"prompt": "a", "n": 100}).encode(), 400, "n: at most"),
        (json.dumps({"prompt": "a " * 3000}).encode(), 400, "prompt: 3000 tokens"),
        (json.dumps({"prompt": "a", "stream": True, "echo": True}).encode(), 400, "echo"),
    ],
)
def test_bad_completion_requests_get_400_naming_the_field(client, body, status, words):
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_bad_score_requests(client):
    for body, words in [({"text": 5}, "text"), ({"text": "a", "top": 99}, "top: at most"), ({"text": []}, "text"),
                        ({"text": "a " * 3000}, "text: 3001 tokens"), ({"txt": "a"}, "unknown field 'txt'")]:
        r = client.post("/v1/score", json=body)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (body, r.text)


def test_body_size_limit(model):
    app = create_app(model, limits=Limits(max_body_bytes=200))
    with TestClient(app) as c:
        big = json.dumps({"prompt": "the " * 100}).encode()
        r = c.post("/v1/completions", content=big)
        assert r.status_code == 413 and "200 bytes (--max-body-bytes)" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: counted while reading
            for _ in range(10):
                yield b" " * 50

        r = c.post("/v1/completions", content=chunks())
        assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "the", "max_tokens": 1}).status_code == 200


def test_unexpected_errors_reach_no_client_as_tracebacks(model, monkeypatch):
    import gcnn.serve.scoring as scoring

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(scoring, "score_details", broken)
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        r = c.post("/v1/score", json={"text": "the cat"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "secret" not in r.text and "Traceback" not in r.text
        assert c.post("/v1/completions", json={"prompt": "the", "max_tokens": 2}).status_code == 200  # still serving
        r = c.get("/nowhere")
        assert r.status_code == 404 and "error" in r.json()


def test_api_key(model):
    key = "k" * 24
    with TestClient(create_app(model, api_key=key)) as c:
        assert c.get("/").status_code == 200 and c.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert c.post("/tokenize", json={"prompt": "a"}, headers=headers).status_code == 401
        ok = {"Authorization": f"Bearer {key}"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "a", "max_tokens": 1}, headers=ok).status_code == 200


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="tokens"' in r.text and "/v1/score" in r.text and "/v1/completions" in r.text


# ---------------------------------------------------------------------------------------------------- concurrency
def test_timeout_frees_the_batch(model):
    app = create_app(model, limits=Limits(max_tokens=100000, timeout=0.5))
    with TestClient(app) as c:
        began = time.monotonic()
        r = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 100000})
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
        assert time.monotonic() - began < 5
        wait_for(lambda: c.get("/health").json()["active_rows"] == 0, what="the timed-out rows to leave")
        assert c.get("/health").json()["timed_out"] == 1


def test_queue_bound_429_and_disconnect_frees_the_slot(model):
    """One long stream fills the batch (one row, no batching); the next request waits for room, the one after it
    fills the queue (size 1): the fourth gets 429. Closing the stream mid-way frees its row and the others run."""
    import asyncio

    app = create_app(model, limits=Limits(max_tokens=1000000, timeout=60), max_rows=1, queue_size=1, batching=False)

    async def scenario(base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            health = lambda: c.get("/health")  # noqa: E731
            async with c.stream("POST", "/v1/completions",
                                json={"prompt": "the", "max_tokens": 1000000, "stream": True}) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                assert first.startswith("data: ")
                async def until(check):
                    for _ in range(500):
                        h = (await health()).json()
                        if check(h):
                            return h
                        await asyncio.sleep(0.02)
                    raise AssertionError(h)

                waiting = [asyncio.create_task(c.post("/v1/completions", json={"prompt": "a", "max_tokens": 3}))]
                await until(lambda h: h["waiting_for_room"] and h["queued"] == 1)  # taken off the queue, waiting
                waiting.append(asyncio.create_task(c.post("/v1/completions", json={"prompt": "a", "max_tokens": 3})))
                h = await until(lambda h: h["queued"] == 2)  # and one in the queue: it is full
                assert h["active_rows"] == 1
                r = await c.post("/v1/completions", json={"prompt": "a", "max_tokens": 3})
                assert r.status_code == 429 and "--queue-size" in r.json()["error"]["message"]
                r = await c.post("/v1/score", json={"text": "a"})
                assert r.status_code == 429
            # the stream is closed: its row leaves, the waiting requests run
            done = await asyncio.wait_for(asyncio.gather(*waiting), timeout=20)
            assert [d.status_code for d in done] == [200, 200]
            h = (await health()).json()
            assert h["active_rows"] == 0 and h["cancelled"] >= 1 and h["queued"] == 0

    with live_server(app) as base:
        asyncio.run(scenario(base))


def test_concurrent_requests_share_steps(model):
    """Eight clients at once: their rows run together (fewer worker steps than one at a time would take) and each
    gets what it gets alone."""
    import asyncio

    app = create_app(model, max_rows=32)
    prompts = ["the cat", "a dog ran", "the", "big red house", "on a mat", "far away", "the dog", "a"]

    async def scenario(base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            asks = [c.post("/v1/completions", json={"prompt": p, "max_tokens": 20, "temperature": 0}) for p in prompts]
            return [r.json()["choices"][0]["text"] for r in await asyncio.gather(*asks)], (await c.get("/health")).json()

    with live_server(app) as base:
        texts, health = asyncio.run(scenario(base))
    expected = generate_text(model, model.vocab, prompts, max_tokens=20, greedy=True, allow_unk=False)
    assert [t.strip(" ").removesuffix("\n") for t in texts] == expected
    assert health["steps"] < 8 * 20  # steps were shared


# ---------------------------------------------------------------------------------------------------- the command
def test_serve_refuses_a_public_address_without_a_key(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    assert main(["serve", str(run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--api-key-file" in err and "Traceback" not in err
    short = tmp_path / "key"
    short.write_text("abc\n")
    assert main(["serve", str(run), "--host", "0.0.0.0", "--api-key-file", str(short)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", str(run), "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["serve", str(run), "--queue-size", "0"]) == 2
    assert "--queue-size must be at least 1" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
        assert f"--port {port}: cannot listen there" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gcnn_serve_on_loopback(tmp_path):
    run = tiny_run(tmp_path / "run")
    key = tmp_path / "key"
    key.write_text("correct-horse-battery-staple\n")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "gcnn", "serve", str(run), "--port", str(port), "--api-key-file",
                             str(key), "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                return False

        wait_for(up, timeout=60, what="gcnn serve to start")
        auth = {"Authorization": "Bearer correct-horse-battery-staple"}
        assert httpx.get(base + "/v1/models", timeout=5).status_code == 401
        models = httpx.get(base + "/v1/models", headers=auth, timeout=5).json()
        assert models["data"][0]["id"] == "run"
        r = httpx.post(base + "/v1/completions", headers=auth, timeout=30,
                       json={"prompt": "the cat", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=20)[0].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode()
    # uvicorn shuts down cleanly, then ends the process by the signal it caught, as Unix tools do
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out and "Traceback" not in out
