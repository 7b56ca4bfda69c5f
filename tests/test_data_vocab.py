"""Vocabulary: frequency order, limits, special-token placement, encode/decode, files."""

import json
from collections import Counter

import pytest

from gcnn.data import Vocabulary
from gcnn.errors import DataError


def counts_of(text: str) -> Counter:
    return Counter(text.split())


def test_ids_sorted_by_frequency_with_specials_placed_by_their_counts():
    counts = counts_of("a a a a b b b c c <eos> <eos> d <unk> <unk>")
    v = Vocabulary.from_counts(counts)
    # count desc, ties by text: a4 b3 (<eos>2 <unk>2 c2) d1
    assert v.itos == ["a", "b", "<eos>", "<unk>", "c", "d"]
    assert v.counts == [4, 3, 2, 2, 2, 1]
    assert (v.unk_id, v.eos_id, v.bos_id) == (3, 2, None)


def test_min_count_moves_rare_words_into_unk_and_its_count():
    v = Vocabulary.from_counts(counts_of("a a a b b c d e <eos>"), min_count=2)
    # c, d, e (1 each) -> <unk> with count 3, now more frequent than b
    assert v.itos == ["<unk>", "a", "b", "<eos>"]
    assert v.counts == [3, 3, 2, 1]
    assert v.encode(["c", "a", "zzz"]) == [v.unk_id, v.stoi["a"], v.unk_id]


def test_max_size_counts_the_special_tokens():
    v = Vocabulary.from_counts(counts_of("a a a b b c <eos>"), max_size=3)
    assert len(v) == 3
    assert v.itos == ["<unk>", "a", "<eos>"]  # <unk> = b + c = 3 ties with a; '<' sorts before 'a'
    with pytest.raises(DataError, match="max_size 2"):
        Vocabulary.from_counts(counts_of("a b"), max_size=2)


def test_sentence_vocabulary_puts_bos_last_and_never_counts_it():
    v = Vocabulary.from_counts(counts_of("x x y </s> </s>"), eos="</s>", bos="<s>")
    assert v.itos[-1] == "<s>" and v.counts[-1] == 0
    assert v.bos_id == len(v) - 1
    assert v.itos[:2] == ["</s>", "x"]


def test_unk_always_present_even_when_nothing_is_rare():
    v = Vocabulary.from_counts(counts_of("a b <eos>"))
    assert "<unk>" in v.stoi and v.counts[v.unk_id] == 0
    assert v.itos[-1] == "<unk>"


def test_encode_decode_round_trip_and_unknown_ids():
    v = Vocabulary.from_counts(counts_of("the cat sat on the mat <eos>"))
    words = "the mat sat".split()
    assert v.decode(v.encode(words)) == words
    assert v.decode(v.encode(["dog"])) == ["<unk>"]
    with pytest.raises(DataError, match="outside this vocabulary"):
        v.decode([len(v)])


def test_tokenize_follows_the_corpus_options():
    punct = Vocabulary.from_counts(counts_of("x <eos>"), splitter="punct", lowercase=True)
    assert punct.tokenize("Who's there? <unk>") == ["who's", "there", "?", "<unk>"]
    plain = Vocabulary.from_counts(counts_of("x <eos>"))
    assert plain.tokenize("Who's  there?") == ["Who's", "there?"]
    assert plain.detokenize(["a", "b"]) == "a b"


def test_save_load_round_trip(tmp_path):
    v = Vocabulary.from_counts(counts_of("b b a </s>"), eos="</s>", bos="<s>", splitter="punct", lowercase=True)
    path = v.save(tmp_path / "vocab.txt")  # any file name works (run folders use vocab.txt)
    w = Vocabulary.load(path)
    assert w == v and w.itos == v.itos and w.counts == v.counts
    assert (w.bos_id, w.eos_id, w.unk_id, w.splitter, w.lowercase) == (v.bos_id, v.eos_id, v.unk_id, "punct", True)
    v.save(tmp_path)  # a folder gets vocab.json
    assert Vocabulary.load(tmp_path) == v


def test_load_rejects_damaged_files(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="damaged vocabulary"):
        Vocabulary.load(path)
    v = Vocabulary.from_counts(counts_of("a <eos>"))
    data = v.to_dict()
    data["itos"].append("a")
    data["counts"].append(1)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'a' twice"):
        Vocabulary.load(path)
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")


def test_fingerprint_distinguishes_same_size_vocabularies():
    a = Vocabulary.from_counts(counts_of("a a b <eos>"))
    b = Vocabulary.from_counts(counts_of("a b b <eos>"))
    assert len(a) == len(b) and a != b
