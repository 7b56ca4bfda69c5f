"""lm-evaluation-harness's ``local-completions`` model pointed at gcnn serve (loopback) scores a small local task
(loglikelihood_rolling over a document written here) and agrees with ``gcnn eval`` on the same text.

The windowing difference (docs/serving.md): lm-eval cuts a document into disjoint windows of max_length - 2 targets,
the first predicted from the prefix token, each later one from a single token of context (but a last, shorter window
gets a full window of context); ``gcnn eval``'s
windows overlap so that every token sees min(i+1, --context) inputs. So with a document shorter than lm-eval's
window the two agree exactly (one pass each), and with shorter windows lm-eval equals ``gcnn eval --context 1
--stride max_length-2`` (when the windows divide the document) and scores worse than ``gcnn eval``'s default."""

import json
import math
import os

import pytest

pytest.importorskip("fastapi", reason="gcnn serve needs the serve extra (pip install 'gcnn[serve]')")
pytest.importorskip("lm_eval", reason="needs lm-eval (pip install 'lm-eval[api]')")

from gcnn.cli import main  # noqa: E402
from gcnn.data import Vocabulary  # noqa: E402
from gcnn.io import load  # noqa: E402
from gcnn.serve import create_app  # noqa: E402
from serve_helpers import live_server  # noqa: E402
from test_evaluate import WORDS, make_run  # noqa: E402

DOCUMENT = "\n".join(" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(5 + i % 4)) for i in range(7)) + "\n"

TASK = """task: gcnn_local_doc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""


def gcnn_eval(capsys, run, data, *extra) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data), "--split", "test", "--json", "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_lm_eval_local_completions_agrees_with_gcnn_eval(tmp_path, capsys, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    text = tmp_path / "doc.txt"
    text.write_text(DOCUMENT)
    assert main(["prepare", "--train", str(text), "--valid", str(text), "--test", str(text),
                 "--out", str(tmp_path / "data"), "--quiet"]) == 0
    vocab = Vocabulary.load(tmp_path / "data" / "vocab.json")
    run = make_run(tmp_path / "run", vocab, adaptive_cutoffs=())
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "docs.jsonl").write_text(json.dumps({"text": DOCUMENT}) + "\n")
    (tasks / "gcnn_local_doc.yaml").write_text(TASK.format(data=tasks / "docs.jsonl"))
    manager = TaskManager(include_path=str(tasks))
    model = load(run)
    n_tokens = gcnn_eval(capsys, run, tmp_path / "data")["tokens"]
    assert n_tokens == len(DOCUMENT.split()) + DOCUMENT.count("\n") == 51

    def lm_eval_nll(base, max_length: int) -> float:
        out = simple_evaluate(
            model="local-completions",
            model_args=f"model=tiny,base_url={base}/v1/completions,num_concurrent=2,max_retries=1,"
                       f"tokenizer_backend=remote,max_length={max_length}",
            tasks=["gcnn_local_doc"], task_manager=manager, log_samples=True, batch_size=1,
        )
        words = len(DOCUMENT.split()) + 1  # lm-eval counts words with re.split(r"\s+"): the final newline adds one
        ppl = out["results"]["gcnn_local_doc"]["word_perplexity,none"]
        (sample,) = out["samples"]["gcnn_local_doc"]
        ll = sample["filtered_resps"][0]
        ll = ll[0] if isinstance(ll, (list, tuple)) else ll
        assert math.log(ppl) * words == pytest.approx(-ll, rel=1e-6)
        return -float(ll)

    with live_server(create_app(model, model_name="tiny")) as base:
        whole = lm_eval_nll(base, 2048)
        windowed = lm_eval_nll(base, 19)  # windows of 17 targets: the 51 tokens in 3 whole windows
    full = gcnn_eval(capsys, run, tmp_path / "data")
    assert whole == pytest.approx(full["cross_entropy"] * full["tokens"], rel=1e-5)
    one = gcnn_eval(capsys, run, tmp_path / "data", "--context", "1", "--stride", "17")
    assert windowed == pytest.approx(one["cross_entropy"] * one["tokens"], rel=1e-5)
    assert abs(windowed - whole) > 1e-3  # the windows do change the score
