"""lm-evaluation-harness on an exported folder, offline, with the local tasks of gcnn.lmeval_tasks: its
word_perplexity is gcnn eval's with the same (disjoint) windows, and multiple-choice loglikelihoods are gcnn's."""

import json
import math
import re

import numpy as np
import pytest
import torch

import gcnn  # noqa: E402
from gcnn.data.text import TextFile, unit_texts, word_tokenizer  # noqa: E402
from gcnn.evaluate import perplexity  # noqa: E402
from gcnn.io import load, save_pretrained  # noqa: E402
from gcnn.lmeval_tasks import TASKS_DIR  # noqa: E402
from test_evaluate import word_vocab  # noqa: E402

TEXT = """ = The cat = 
 the cat sat on a mat and the dog ran far away from the big red house 
 
 a dog ran , far far away zebra 
 the big red cat sat on the dog and the mat 
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


def exported(folder, arch="gcnn-tiny"):
    pytest.importorskip("transformers")
    vocab = word_vocab()
    torch.manual_seed(0)
    model = gcnn.build_model(arch, vocab_size=len(vocab), adaptive_cutoffs=())
    return save_pretrained(model, folder, vocab)


def evaluate(folder, task, **metadata):
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    """lm-eval's Python API, as `lm_eval --model hf --model_args pretrained=FOLDER,trust_remote_code=True,
    add_bos_token=False --include_path TASKS_DIR --tasks TASK` runs it. add_bos_token=False: the tokenizer puts the
    start marker before a text by default (as gcnn generate conditions a prompt), and lm-eval adds its own prefix."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model="hf", model_args=f"pretrained={folder},trust_remote_code=True,dtype=float32,add_bos_token=False", tasks=[task],
        task_manager=TaskManager(include_path=str(TASKS_DIR), metadata=metadata), batch_size=4, device="cpu",
        log_samples=True,
    )


def file_ids(path, vocab):
    tokens = word_tokenizer(vocab.splitter, vocab.lowercase)
    return np.array([i for lines in TextFile(path).line_chunks()
                     for i in vocab.encode(tokens(unit_texts("wikitext", lines, vocab.eos), vocab.eos))])


@pytest.mark.parametrize("arch", ["gcnn-tiny", pytest.param("transformer-tiny", marks=pytest.mark.slow)])
def test_word_perplexity_is_gcnn_eval_with_disjoint_windows(tmp_path, arch):
    folder = exported(tmp_path / "m", arch)
    text = tmp_path / "doc.txt"
    text.write_text(TEXT * 5, encoding="utf-8")
    results = evaluate(folder, "gcnn_wikitext", data_file=str(text))
    scores = results["results"]["gcnn_wikitext"]
    model = load(folder)
    window = model.receptive_field if arch == "gcnn-tiny" else model.config.max_len  # max_position_embeddings
    ids = file_ids(text, model.vocab)
    assert len(ids) > 3 * window  # several windows, the last one partial
    assert len(ids) % window
    ours = perplexity(model, ids, eos_id=model.vocab.eos_id, context=1, stride=window, align_last=True)
    words = len(re.split(r"\s+", TEXT * 5))  # lm-eval's count, on the page (the leading and trailing "" count too)
    assert words == len((TEXT * 5).split()) + 2
    assert scores["word_perplexity,none"] == pytest.approx(math.exp(ours.nll / words), rel=1e-4)
    size = len((TEXT * 5).encode())
    assert scores["bits_per_byte,none"] == pytest.approx(ours.nll / size / math.log(2), rel=1e-4)
    # the windows matter: gcnn eval's default sliding windows give another (better) figure
    sliding = perplexity(model, ids, eos_id=model.vocab.eos_id)
    assert abs(sliding.nll - ours.nll) > 1e-3


def test_multiple_choice_loglikelihoods_are_gcnn_scores(tmp_path):
    folder = exported(tmp_path / "m")
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"context": "the cat sat on", "choices": ["a mat", "the dog", "far away"], "label": 0}\n'
        '{"context": "the big red", "choices": ["house", "cat ran"], "label": 1}\n', encoding="utf-8")
    results = evaluate(folder, "gcnn_choice", choice_file=str(questions))
    samples = results["samples"]["gcnn_choice"]
    model = load(folder)
    vocab = model.vocab
    assert len(samples) == 2
    for sample in samples:
        doc = sample["doc"]
        context = vocab.encode(doc["context"].split())
        for choice, response in zip(doc["choices"], sample["filtered_resps"]):
            continuation = vocab.encode(choice.split())
            tokens = torch.tensor([context + continuation])
            with torch.no_grad():
                lp = model.next_token_log_probs(tokens[:, :-1])[0]
            expected = sum(float(lp[len(context) - 1 + j, t]) for j, t in enumerate(continuation))
            assert float(response[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert 0.0 <= results["results"]["gcnn_choice"]["acc,none"] <= 1.0


def rolling_windows(tokens, prefix, max_len):
    """lm-eval's loglikelihood_rolling windows (get_rolling_token_windows with context_len=1, then
    make_disjoint_window), as (inputs, number of targets scored at the end)."""
    first = min(max_len, len(tokens))
    windows = [([prefix] + tokens[: first - 1], first)]
    done = first
    while done < len(tokens):
        count = min(len(tokens) - done, max_len)
        end = done + count
        windows.append((tokens[end - max_len - 1 : end - 1], count))
        done = end
    return windows


@pytest.mark.parametrize("n,window", [(1, 4), (4, 4), (9, 4), (23, 5), (24, 6), (30, 1)])
def test_disjoint_windows_are_lm_evals(n, window):
    from gcnn.evaluate import stream_windows

    tokens = list(range(100, 100 + n))
    z = [-1] + tokens[:-1]  # gcnn's stream: the start marker, then the tokens shifted by one
    ours = [(z[begin:end], end - first) for begin, first, end in stream_windows(n, 1, window, align_last=True)]
    assert ours == rolling_windows(tokens, -1, window)


def test_cli_eval_disjoint(tmp_path, capsys):
    from test_evaluate import prepared_corpus

    from gcnn.data import PreparedData

    folder = prepared_corpus(tmp_path)
    data = PreparedData.open(folder)
    torch.manual_seed(0)
    run = save_pretrained(gcnn.build_model("gcnn-tiny", vocab_size=len(data.vocab)), tmp_path / "m", data.vocab)
    from gcnn.cli import main

    assert main(["eval", str(run), "--data", str(folder), "--disjoint", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = load(run)
    expected = perplexity(model, data.split("test"), eos_id=data.vocab.eos_id, context=1, stride=5, align_last=True)
    assert report["nll"] == pytest.approx(expected.nll, rel=1e-6) and (report["context"], report["stride"]) == (1, 5)
    assert report["nll"] != pytest.approx(perplexity(model, data.split("test"), eos_id=data.vocab.eos_id,
                                                     context=1, stride=5).nll, rel=1e-6)  # the last window differs
    assert main(["eval", str(run), "--data", str(folder), "--disjoint", "5", "--stride", "3"]) == 2
    assert "--disjoint" in capsys.readouterr().err
