"""lm-evaluation-harness on an exported folder, offline, with the local tasks of gcnn.lmeval_tasks: its
word_perplexity is gcnn eval's with the same (disjoint) windows, and multiple-choice loglikelihoods are gcnn's."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

import gcnn
from gcnn.data.text import TextFile, unit_texts, word_tokenizer
from gcnn.evaluate import perplexity
from gcnn.io import load, save_pretrained
from gcnn.lmeval_tasks import TASKS_DIR
from test_evaluate import word_vocab

# context 1 is what lm-eval's windows mean: gcnn's warning about it is expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*every token is predicted from one input token")

TEXT = """ = The cat = 
 the cat sat on a mat and the dog ran far away from the big red house 
 
 a dog ran , far far away zebra 
 the big red cat sat on the dog and the mat 
"""


QUESTIONS = (
    '{"context": "the cat sat on", "choices": ["a mat", "the dog", "far away"], "label": 0}\n'
    '{"context": "the big red", "choices": ["house", "cat ran"], "label": 1}\n'
)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def exported(folder, arch="gcnn-tiny"):
    vocab = word_vocab()
    torch.manual_seed(0)
    model = gcnn.build_model(arch, vocab_size=len(vocab), adaptive_cutoffs=())
    return save_pretrained(model, folder, vocab)


def evaluate(folder, tasks, **metadata):
    """lm-eval's Python API, as `lm_eval --model hf --model_args pretrained=FOLDER,trust_remote_code=True,
    add_bos_token=False --include_path TASKS_DIR --tasks TASKS` runs it, offline. add_bos_token=False: the tokenizer
    puts the start marker before a text by default (as gcnn generate conditions a prompt); lm-eval adds its own."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    saved = {name: os.environ.get(name) for name in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        return simple_evaluate(
            model="hf", model_args=f"pretrained={folder},trust_remote_code=True,dtype=float32,add_bos_token=False",
            tasks=tasks, task_manager=TaskManager(include_path=str(TASKS_DIR), metadata=metadata), batch_size=4,
            device="cpu", log_samples=True,
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def gcnn_tiny_run(tmp_path_factory):
    """One lm-eval run of both local tasks on an exported gcnn-tiny (one model load for the two tests)."""
    folder = tmp_path_factory.mktemp("lmeval")
    exported(folder / "m")
    (folder / "doc.txt").write_text(TEXT * 5, encoding="utf-8")
    (folder / "q.jsonl").write_text(QUESTIONS, encoding="utf-8")
    results = evaluate(folder / "m", ["gcnn_wikitext", "gcnn_choice"], data_file=str(folder / "doc.txt"),
                       choice_file=str(folder / "q.jsonl"))
    return folder, results


def file_ids(path, vocab):
    tokens = word_tokenizer(vocab.splitter, vocab.lowercase)
    return np.array([i for lines in TextFile(path).line_chunks()
                     for i in vocab.encode(tokens(unit_texts("wikitext", lines, vocab.eos), vocab.eos))])


def check_word_perplexity(folder, text, scores, window):
    model = load(folder)
    ids = file_ids(text, model.vocab)
    assert len(ids) > 3 * window  # several windows, the last one partial
    assert len(ids) % window
    ours = perplexity(model, ids, eos_id=model.vocab.eos_id, context=1, stride=window, align_last=True)
    page = text.read_text(encoding="utf-8")
    words = len(re.split(r"\s+", page))  # lm-eval's count, on the page (the leading and trailing "" count too)
    assert words == len(page.split()) + 2
    assert scores["word_perplexity,none"] == pytest.approx(math.exp(ours.nll / words), rel=1e-4)
    assert scores["bits_per_byte,none"] == pytest.approx(ours.nll / len(page.encode()) / math.log(2), rel=1e-4)
    # the windows matter: gcnn eval's default sliding windows give another (better) figure
    sliding = perplexity(model, ids, eos_id=model.vocab.eos_id)
    assert abs(sliding.nll - ours.nll) > 1e-3


def test_word_perplexity_is_gcnn_eval_with_disjoint_windows(gcnn_tiny_run):
    folder, results = gcnn_tiny_run
    window = load(folder / "m").receptive_field  # max_position_embeddings, lm-eval's max_length
    check_word_perplexity(folder / "m", folder / "doc.txt", results["results"]["gcnn_wikitext"], window)


@pytest.mark.slow
def test_word_perplexity_of_a_transformer(tmp_path):
    folder = exported(tmp_path / "m", "transformer-tiny")
    (tmp_path / "doc.txt").write_text(TEXT * 5, encoding="utf-8")
    results = evaluate(folder, ["gcnn_wikitext"], data_file=str(tmp_path / "doc.txt"))
    check_word_perplexity(folder, tmp_path / "doc.txt", results["results"]["gcnn_wikitext"], load(folder).config.max_len)


def test_multiple_choice_loglikelihoods_are_gcnn_scores(gcnn_tiny_run):
    folder, results = gcnn_tiny_run
    samples = results["samples"]["gcnn_choice"]
    model = load(folder / "m")
    vocab = model.vocab
    assert len(samples) == 2
    for sample in samples:
        doc = sample["doc"]
        context = vocab.encode(doc["context"].split())  # lm-eval conditions on the context's tokens only
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
