"""Dataset loaders and result processing of the local lm-evaluation-harness tasks (see __init__.py)."""

import json
import os
import re
from pathlib import Path


def _path(given, variable, default=None):
    path = given or os.environ.get(variable) or default
    if not path:
        raise ValueError(f"no data file: pass --metadata '{{\"data_file\": PATH}}' or set {variable}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (from {'metadata' if given else variable})")
    return path


def text_documents(data_file=None, **_):
    """The whole text file as one document ("page"), read as gcnn reads corpus files (UTF-8, a BOM dropped, line
    ends as \\n), so that it is the same token stream as the file's split prepared by gcnn."""
    import datasets

    path = _path(data_file, "GCNN_LMEVAL_TEXT")
    text = path.read_text(encoding="utf-8-sig")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"page": text}])})


def page(doc):
    return doc["page"]


def process_results(doc, results):
    """As lm-eval's wikitext task: words counted on the page by splitting at whitespace runs, bytes as UTF-8."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["page"]))
    size = len(doc["page"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }


def choice_documents(choice_file=None, **_):
    """Multiple-choice questions, one JSON object a line: {"context": str, "choices": [str, ...], "label": int}."""
    import datasets

    path = _path(choice_file, "GCNN_LMEVAL_CHOICES", Path(__file__).with_name("gcnn_choice.jsonl"))
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not (isinstance(row.get("context"), str) and isinstance(row.get("choices"), list)
                and isinstance(row.get("label"), int) and 0 <= row["label"] < len(row["choices"])):
            raise ValueError(f"{path}: line {number}: expected {{\"context\": str, \"choices\": [...], \"label\": int}}")
        rows.append({"context": row["context"], "choices": [str(c) for c in row["choices"]], "label": row["label"]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
