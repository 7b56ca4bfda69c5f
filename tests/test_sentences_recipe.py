"""configs/sentences-cpu.toml and benchmarks/wikitext2_sentences.py: WikiText lines split into sentences, prepared as
independent sentences, and a recipe that stops before it overfits."""

import sys
from pathlib import Path

import pytest

from gcnn.data import PreparedData, find_corpus, prepare
from gcnn.train import build_config, resolve_model_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def ws():
    sys.path.insert(0, str(BENCHMARKS))
    import wikitext2_sentences

    yield wikitext2_sentences
    sys.path.remove(str(BENCHMARKS))


def test_wikitext_lines_become_sentences(ws, tmp_path):
    lines = [" \n", " = Valkyria Chronicles = \n", " \n", " = = Gameplay = = \n",
             " The game is good . It sold 1 @,@ 000 copies ! Why ? Because \n",
             " A lone paragraph without a full stop \n"]
    assert list(ws.sentences(lines)) == [
        ["The", "game", "is", "good", "."], ["It", "sold", "1", "@,@", "000", "copies", "!"], ["Why", "?"],
        ["Because"], ["A", "lone", "paragraph", "without", "a", "full", "stop"]]
    source = tmp_path / "wiki.train.tokens"
    source.write_text("".join(lines))
    stats = ws.write_split(source, tmp_path / "train.txt", limit=12)  # whole sentences up to 12 words
    assert stats == {"sentences": 2, "words": 12}
    assert (tmp_path / "train.txt").read_text().splitlines() == ["The game is good .", "It sold 1 @,@ 000 copies !"]
    # prepared with --format sentences: each line one independent sentence
    for split in ("valid", "test"):
        (tmp_path / f"{split}.txt").write_text("Why ?\nThe game is good .\n")
    data = prepare(find_corpus(train=[tmp_path / "train.txt"], valid=[tmp_path / "valid.txt"],
                               test=[tmp_path / "test.txt"], format="sentences"), tmp_path / "prepared")
    assert PreparedData.open(data.path).mode == "sentence"


def test_the_sentence_recipe_stops_early_and_regularizes_harder_than_the_wikitext2_one():
    config = build_config(recipe=CONFIGS / "sentences-cpu.toml", flags={"data": "d", "out": "o"})
    wikitext = build_config(recipe=CONFIGS / "wikitext2-cpu.toml", flags={"data": "d", "out": "o"})
    model = resolve_model_config(config.model, 10000)
    assert config.early_stop_patience > 0 and config.min_delta > 0 and config.schedule == "plateau"
    assert config.valid_every > 0 and config.max_epochs > 0
    assert model.adaptive_cutoffs == (2000,)  # a 10,000-word vocabulary: the 10,000 cutoff is dropped
    assert model.dropout > resolve_model_config(wikitext.model, 10000).dropout and model.embed_dropout > 0
    assert config.weight_decay > wikitext.weight_decay
