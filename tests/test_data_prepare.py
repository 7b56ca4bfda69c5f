"""prepare: counts and OOV rates, formats, the prepared folder, atomicity, and every bad input's message."""

import json
import re

import numpy as np
import pytest

import gcnn.data.corpus as corpus_module
from gcnn.cli import main
from gcnn.data import PreparedData, find_corpus, prepare
from gcnn.errors import DataError


def write_corpus(folder, train, valid, test, pattern="wiki.{}.tokens"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        (folder / pattern.format(split)).write_bytes(data)
    return folder


@pytest.fixture
def tiny(tmp_path):
    """A WikiText-style corpus small enough to count by hand."""
    return write_corpus(tmp_path / "tiny", "a a a b b c\n", "a d e\nb\n", "<unk> a\n")


def test_counts_and_oov_rates_computed_by_hand(tiny, tmp_path):
    data = prepare(find_corpus(tiny), tmp_path / "out", min_count=2)
    # train tokens: a a a b b c <eos> -> a3 b2; c (1) -> <unk>1; <eos>1 ; ties by text: "<eos>" < "<unk>"
    assert data.vocab.itos == ["a", "b", "<eos>", "<unk>"]
    splits = data.manifest["splits"]
    assert [splits[s]["tokens"] for s in ("train", "valid", "test")] == [7, 6, 3]
    assert splits["train"]["oov_rate"] == pytest.approx(1 / 7)  # c
    assert splits["valid"]["oov_rate"] == pytest.approx(2 / 6)  # d, e out of a d e <eos> b <eos>
    assert splits["test"]["oov_rate"] == 0  # a <unk> written in the text is a word of the vocabulary, not an OOV
    assert splits["test"]["unk"] == 1
    assert data.split("train").tolist() == [0, 0, 0, 1, 1, 3, 2]
    assert data.split("valid").tolist() == [0, 3, 3, 2, 1, 2]
    assert data.vocab.decode(data.split("test")) == ["<unk>", "a", "<eos>"]


def test_prepared_folder_layout_and_manifest(tiny, tmp_path):
    data = prepare(find_corpus(tiny), tmp_path / "out")
    assert sorted(p.name for p in data.path.iterdir()) == [
        "manifest.json", "test.bin", "train.bin", "valid.bin", "vocab.json"
    ]
    m = json.loads((data.path / "manifest.json").read_text())
    assert m["format"] == "gcnn-prepared" and m["format_version"] == 1
    assert m["mode"] == "stream" and data.mode == "stream"
    assert m["options"]["format"] == "wikitext" and m["options"]["min_count"] == 1
    assert m["vocab"]["size"] == data.vocab_size == len(data.vocab)
    source = m["splits"]["train"]["sources"][0]
    assert source["path"].endswith("wiki.train.tokens") and source["lines"] == 1 and len(source["sha256"]) == 64
    assert data.split("train").dtype == np.uint16
    assert not list(tmp_path.glob(".out.*"))  # no partial folder left beside it


def test_frequency_order_on_a_random_corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{int(i)}" for i in rng.zipf(1.5, size=3000) % 200]
    lines = "\n".join(" ".join(words[i : i + 10]) for i in range(0, 3000, 10)) + "\n"
    folder = write_corpus(tmp_path / "zipf", lines, "w1 w2\n", "w3\n")
    data = prepare(find_corpus(folder), tmp_path / "out")
    counts = data.vocab.counts
    assert counts == sorted(counts, reverse=True)
    ids = data.split("train")
    assert np.bincount(ids, minlength=data.vocab_size).tolist() == counts  # the counts are the targets' counts


def test_sentences_format_stores_eos_but_never_bos(tmp_path):
    folder = write_corpus(
        tmp_path / "ptb", "the cat\n<s> a dog </s>\n\n", "the cow\n", "a cat\n", pattern="ptb.{}.txt"
    )
    corpus = find_corpus(folder)
    assert corpus.format == "sentences"
    data = prepare(corpus, tmp_path / "out")
    v = data.vocab
    assert data.mode == "sentence" and v.eos == "</s>" and v.bos_id == len(v) - 1
    assert v.decode(data.split("train")) == ["the", "cat", "</s>", "a", "dog", "</s>"]
    assert v.bos_id not in data.split("train").tolist()
    assert data.manifest["splits"]["train"]["sequences"] == 2
    assert data.manifest["splits"]["valid"]["oov_rate"] == pytest.approx(1 / 3)  # cow


def test_plain_format_with_punctuation_splitting_and_named_files(tmp_path):
    (tmp_path / "a.txt").write_text("Hello, world!\n\n  \nHello again.\n")
    (tmp_path / "b.txt").write_text("World, hello.\n")
    corpus = find_corpus(
        train=[tmp_path / "a.txt"], valid=[tmp_path / "b.txt"], test=[tmp_path / "b.txt"], splitter="punct",
        lowercase=True,
    )
    assert corpus.format == "plain"
    data = prepare(corpus, tmp_path / "out")
    # blank lines skipped in plain text: two lines, two <eos>
    assert data.vocab.decode(data.split("train")) == ["hello", ",", "world", "!", "<eos>", "hello", "again", ".", "<eos>"]
    assert data.vocab.encode(data.vocab.tokenize("Hello world")) == data.vocab.encode(["hello", "world"])


def test_glob_patterns_name_several_files_in_order(tmp_path):
    for i, text in enumerate(["one\n", "two\n", "three\n"]):
        (tmp_path / f"part-{i}.txt").write_text(text)
    (tmp_path / "v.txt").write_text("one\n")
    corpus = find_corpus(train=[str(tmp_path / "part-*.txt")], valid=[tmp_path / "v.txt"], test=[tmp_path / "v.txt"])
    data = prepare(corpus, tmp_path / "out")
    assert data.vocab.decode(data.split("train")) == ["one", "<eos>", "two", "<eos>", "three", "<eos>"]
    assert len(data.manifest["splits"]["train"]["sources"]) == 3


def test_bpe_vocabulary_is_frequency_sorted_and_round_trips(tmp_path):
    pytest.importorskip("tokenizers", reason="BPE vocabularies need the bpe extra: pip install -e '.[bpe]'")
    text = "the quick brown fox jumps over the lazy dog\nthe dog barks at the fox\n" * 20
    folder = write_corpus(tmp_path / "c", text, "the lazy fox\n", "a quick dog\n")
    data = prepare(find_corpus(folder), tmp_path / "out", bpe=60)
    v = data.vocab
    assert v.splitter == "bpe" and len(v) <= 60 and data.manifest["options"]["bpe"] == 60
    assert v.counts == sorted(v.counts, reverse=True)
    ids = data.split("valid").tolist()
    assert ids[-1] == v.eos_id
    assert v.detokenize(v.decode(ids[:-1])) == "the lazy fox"
    reloaded = PreparedData.open(data.path).vocab
    assert reloaded.encode(reloaded.tokenize("the lazy fox")) == ids[:-1]


def test_large_vocabularies_use_uint32(tmp_path):
    words = " ".join(f"w{i}" for i in range(70_000))
    folder = write_corpus(tmp_path / "big", words + "\n", "w1\n", "w2\n")
    data = prepare(find_corpus(folder), tmp_path / "out")
    assert data.vocab_size == 70_002 and data.split("train").dtype == np.uint32


# ------------------------------------------------------------------------------------------------------ atomicity
def test_failure_mid_prepare_leaves_no_folder(tiny, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(corpus_module, "_manifest", boom)  # after every id file is written
    with pytest.raises(RuntimeError):
        prepare(find_corpus(tiny), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_interrupted_prepare_keeps_the_previous_folder(tiny, tmp_path, monkeypatch):
    old = prepare(find_corpus(tiny), tmp_path / "out")
    before = old.split("train").tolist()
    (tiny / "wiki.valid.tokens").write_bytes(b"ok\n\xff\n")  # fails while encoding, after train.bin
    with pytest.raises(DataError):
        prepare(find_corpus(tiny), tmp_path / "out", overwrite=True)
    assert PreparedData.open(tmp_path / "out").split("train").tolist() == before
    assert not list(tmp_path.glob(".out*"))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    (tiny / "wiki.valid.tokens").write_text("a\n")
    monkeypatch.setattr(corpus_module, "_manifest", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(find_corpus(tiny), tmp_path / "out", overwrite=True)
    assert PreparedData.open(tmp_path / "out").split("train").tolist() == before
    assert not list(tmp_path.glob(".out*"))


def test_stale_partial_folders_of_dead_processes_are_removed(tiny, tmp_path):
    stale = tmp_path / ".out.tmp-99999999-abcd0123"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0\0")
    prepare(find_corpus(tiny), tmp_path / "out")
    assert not stale.exists()


def test_output_folder_rules(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    prepare(find_corpus(tiny), tmp_path / "empty")  # an empty folder is fine
    with pytest.raises(DataError, match="already holds prepared data; pass overwrite=True to replace it"):
        prepare(find_corpus(tiny), tmp_path / "empty")
    prepare(find_corpus(tiny), tmp_path / "empty", overwrite=True)
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="holds notes.txt, not prepared data"):
        prepare(find_corpus(tiny), other, overwrite=True)
    assert (other / "notes.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------------------------ bad input
def test_missing_split_file_is_named(tmp_path):
    folder = tmp_path / "wt"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_text("a\n")
    (folder / "wiki.test.tokens").write_text("a\n")
    with pytest.raises(DataError, match=r"missing valid split file \(looked for wiki.valid.tokens"):
        find_corpus(folder)
    with pytest.raises(DataError, match="no such folder"):
        find_corpus(tmp_path / "nowhere")
    with pytest.raises(DataError, match="cannot tell the corpus format"):
        find_corpus(tmp_path)
    with pytest.raises(DataError, match="no file matches"):
        find_corpus(train=[str(tmp_path / "x-*")], valid=["v"], test=["t"])


def test_empty_file_is_named(tmp_path):
    folder = write_corpus(tmp_path / "c", "a b\n", "", "a\n")
    with pytest.raises(DataError, match=r"wiki.valid.tokens: valid split file is empty"):
        prepare(find_corpus(folder), tmp_path / "out")
    folder = write_corpus(tmp_path / "d", "a b\n", "\n\n", "a\n", pattern="{}.txt")
    with pytest.raises(DataError, match="valid split has no words"):
        prepare(find_corpus(folder, format="plain"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_utf8_file_names_file_and_line(tmp_path):
    folder = write_corpus(tmp_path / "c", b"fine\nalso fine\ncaf\xe9 au lait\n", "a\n", "a\n")
    with pytest.raises(DataError, match=r"wiki.train.tokens: line 3, byte 4: not valid UTF-8"):
        prepare(find_corpus(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_manifest(tiny, tmp_path):
    out = prepare(find_corpus(tiny), tmp_path / "out").path
    manifest = out / "manifest.json"
    good = json.loads(manifest.read_text())
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(DataError, match="damaged manifest, not valid JSON"):
        PreparedData.open(out)
    broken = json.loads(json.dumps(good))
    del broken["splits"]["valid"]["dtype"]
    manifest.write_text(json.dumps(broken))
    with pytest.raises(DataError, match="'splits.valid.dtype' is missing"):
        PreparedData.open(out)
    manifest.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(DataError, match="newer gcnn"):
        PreparedData.open(out)
    manifest.write_text(json.dumps({**good, "vocab": {**good["vocab"], "sha256": "0" * 64}}))
    with pytest.raises(DataError, match="does not match its sha256"):
        PreparedData.open(out)
    manifest.unlink()
    with pytest.raises(DataError, match="incomplete one: manifest.json is missing"):
        PreparedData.open(out)


def test_truncated_id_file(tiny, tmp_path):
    out = prepare(find_corpus(tiny), tmp_path / "out").path
    (out / "train.bin").write_bytes((out / "train.bin").read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train.bin: 12 bytes, but 7 uint16 ids need 14"):
        PreparedData.open(out)


def test_ids_out_of_range(tiny, tmp_path):
    data = prepare(find_corpus(tiny), tmp_path / "out")
    ids = np.fromfile(data.path / "valid.bin", dtype=np.uint16)
    ids[2] = 60000
    ids.tofile(data.path / "valid.bin")
    with pytest.raises(DataError, match=r"valid.bin: id 60000 at position 2 is out of range"):
        PreparedData.open(data.path)


def test_id_files_rewritten_with_in_range_ids_fail_their_hash(tiny, tmp_path, capsys):
    data = prepare(find_corpus(tiny), tmp_path / "out")
    ids = np.fromfile(data.path / "valid.bin", dtype=np.uint16)
    ids[[0, 1]] = ids[[1, 0]] if ids[0] != ids[1] else (ids[0] + 1) % data.vocab_size
    ids.tofile(data.path / "valid.bin")
    with pytest.raises(DataError, match=r"valid.bin: the ids of split 'valid' changed since `gcnn prepare` wrote them"):
        PreparedData.open(data.path, verify="full")
    assert main(["prepare", "--check", str(data.path)]) == 2
    assert "valid.bin: the ids of split 'valid' changed" in capsys.readouterr().err


def test_a_symlinked_id_file_is_refused(tiny, tmp_path):
    data = prepare(find_corpus(tiny), tmp_path / "out")
    outside = tmp_path / "elsewhere.bin"
    (data.path / "test.bin").rename(outside)
    (data.path / "test.bin").symlink_to(outside)
    with pytest.raises(DataError, match=r"test.bin: a symbolic link \(to .*elsewhere.bin\)"):
        PreparedData.open(data.path)


def test_vocabulary_size_mismatch_is_refused(tiny, tmp_path):
    data = prepare(find_corpus(tiny), tmp_path / "out")
    data.check_vocab_size(data.vocab_size)
    with pytest.raises(DataError, match=r"vocabulary of 10 tokens but the data in .* has 5"):
        data.check_vocab_size(10)
    with pytest.raises(DataError, match="split 'dev'"):
        data.split("dev")


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_prepares_and_prints_a_summary(tiny, tmp_path, capsys):
    assert main(["prepare", "--data", str(tiny), "--out", str(tmp_path / "out"), "--quiet", "--min-count", "2"]) == 0
    out = capsys.readouterr().out
    assert "vocabulary: 4 tokens" in out and str(tmp_path / "out") in out
    assert "valid" in out and "33.33%" in out
    assert main(["prepare", "--check", str(tmp_path / "out")]) == 0
    assert "every id" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "missing valid split file"),
        ("empty", "is empty"),
        ("latin1", "wiki.valid.tokens: line 1, byte 1: not valid UTF-8"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_a_message(tmp_path, capsys, damage, message):
    folder = write_corpus(tmp_path / "c", "a b\n", "a\n", "b\n")
    if damage == "missing":
        (folder / "wiki.valid.tokens").unlink()
    elif damage == "empty":
        (folder / "wiki.valid.tokens").write_bytes(b"")
    else:
        (folder / "wiki.valid.tokens").write_bytes(b"\xe0\xe9\n")
    assert main(["prepare", "--data", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gcnn prepare: error:") and message in err
    assert not (tmp_path / "out").exists()


def test_cli_check_fails_on_a_damaged_folder(tiny, tmp_path, capsys):
    out = prepare(find_corpus(tiny), tmp_path / "out").path
    (out / "manifest.json").write_text("{")
    assert main(["prepare", "--check", str(out)]) == 2
    assert "damaged manifest" in capsys.readouterr().err
    assert main(["prepare", "--data", str(tiny)]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_line_endings_and_byte_order_mark_do_not_change_the_ids(tmp_path):
    unix = write_corpus(tmp_path / "unix", "a b\n\nc\n", "a\n", "b\n")
    dos = write_corpus(tmp_path / "dos", "\ufeffa b\r\n\r\nc\r\n".encode("utf-8"), "a\r\n", "b")
    one, two = prepare(find_corpus(unix), tmp_path / "o1"), prepare(find_corpus(dos), tmp_path / "o2")
    for split in ("train", "valid", "test"):
        assert two.split(split).tolist() == one.split(split).tolist()  # a last line without \n still gets <eos>
    assert two.vocab == one.vocab


@pytest.mark.parametrize(
    "options, message, flags",
    [
        ({"min_count": 0}, "{min_count} must be at least 1", ["--min-count", "0"]),
        ({"max_size": 2}, "{max_size} 2 leaves no room", ["--max-size", "2"]),
        ({"bpe": 2}, "{bpe} 2 is too small", ["--bpe", "2"]),
        ({"bpe": 100, "max_size": 50}, "{max_size} is for word vocabularies; with {bpe}", ["--bpe", "100", "--max-size", "50"]),
    ],
)
def test_bad_vocabulary_options_fail_before_reading(tiny, tmp_path, options, message, flags, capsys):
    """The library names its parameters; the command line names its flags for the same error."""
    library = message.format(**{name: name for name in ("min_count", "max_size", "bpe")})
    with pytest.raises(DataError, match=re.escape(library)):
        prepare(find_corpus(tiny), tmp_path / "out", **options)
    assert not list(tmp_path.glob("*out*"))
    assert main(["prepare", "--data", str(tiny), "--out", str(tmp_path / "out"), "--quiet", *flags]) == 2
    cli = message.format(min_count="--min-count", max_size="--max-size", bpe="--bpe")
    assert cli in capsys.readouterr().err
    assert not list(tmp_path.glob("*out*"))
