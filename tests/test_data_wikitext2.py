"""WikiText-2 from ../shared/data: the published token counts and vocabulary size, exactly."""

from pathlib import Path

import numpy as np
import pytest

from gcnn.data import batches, find_corpus, num_batches, prepare

WIKITEXT2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"


@pytest.fixture(scope="module")
def wikitext2(tmp_path_factory):
    if not (WIKITEXT2 / "wiki.train.tokens").is_file():
        pytest.skip(f"WikiText-2 not found at {WIKITEXT2} (only present beside the project's own checkout)")
    return prepare(find_corpus(WIKITEXT2), tmp_path_factory.mktemp("wt2") / "prepared")


def test_token_counts_and_vocabulary_size(wikitext2):
    assert wikitext2.mode == "stream"
    assert [wikitext2.num_tokens(s) for s in ("train", "valid", "test")] == [2_088_628, 217_646, 245_569]
    assert wikitext2.vocab_size == 33_278
    assert wikitext2.vocab.bos_id is None  # no <s> or <pad> added to a stream corpus
    assert all(wikitext2.manifest["splits"][s]["oov_rate"] == 0 for s in ("train", "valid", "test"))
    assert wikitext2.split("train").dtype == np.uint16


def test_frequency_order_and_round_trip(wikitext2):
    v = wikitext2.vocab
    assert v.itos[:4] == ["the", ",", ".", "of"]
    assert v.counts == sorted(v.counts, reverse=True)
    with open(WIKITEXT2 / "wiki.valid.tokens", encoding="utf-8") as f:
        head = [w for line in [next(f) for _ in range(4)] for w in line.split() + ["<eos>"]]
    assert v.decode(wikitext2.split("valid")[: len(head)]) == head


def test_unshuffled_validation_pass_is_the_whole_split(wikitext2):
    valid = wikitext2.split("valid")
    n = num_batches(wikitext2, split="valid", batch_size=64, context=512, shuffle=False)
    seen = 0
    for _, y in batches(wikitext2, split="valid", batch_size=64, context=512, shuffle=False):
        seen += int((y != -100).sum())
        n -= 1
    assert n == 0 and seen == len(valid) - 1
