"""Decoding synthetic CTC emissions through pyctcdecode and flashlight-text with a gcnn LM: the plug-ins follow the
decoders' interfaces, their scores are the model's, and a tiny LM trained on the sentences' language lowers the
error rates of every decoder."""

import math
import random

import numpy as np
import pytest
import torch

import gcnn
from gcnn.asr import synth
from gcnn.asr.metrics import cer, edit_distance, wer
from gcnn.errors import ConfigError

pyctcdecode = pytest.importorskip("pyctcdecode")  # the `asr` extra: CI installs it
flashlight_decoder = pytest.importorskip("flashlight.lib.text.decoder")

SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the old man", "a small child"]
VERBS = ["sat on", "looked at", "ran to", "jumped over", "slept near"]
OBJECTS = ["the mat", "a tree", "the house", "the red car", "a big box", "the river"]


def sentences(rng, n):
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}" for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_lm():
    """gcnn-tiny trained for a few seconds on sentences of a small grammar (the LM knows the language)."""
    torch.set_num_threads(1)
    rng = random.Random(0)
    train = sentences(rng, 2000)
    counts = {}
    for s in train:
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    vocab = gcnn.Vocabulary.from_counts(counts, eos="</s>", bos="<s>")
    ids = []
    for s in train:
        ids += [vocab.bos_id] + vocab.encode(s.split()) + [vocab.eos_id]
    ids = torch.tensor(ids)
    torch.manual_seed(0)
    model = gcnn.build_model("gcnn-tiny", vocab_size=len(vocab), adaptive_cutoffs=())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    length = 24
    for _ in range(150):
        starts = torch.randint(0, len(ids) - length - 1, (16,))
        x = torch.stack([ids[s : s + length] for s in starts])
        y = torch.stack([ids[s + 1 : s + length + 1] for s in starts])
        loss = model(x, y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.vocab = vocab
    test = sentences(random.Random(1), 12)
    rng = np.random.default_rng(0)
    emissions = [synth.emissions(s, rng, confusion=0.25) for s in test]
    return model, test, emissions


def sentence_log_prob(model, words):
    vocab = model.vocab
    ids = [vocab.bos_id] + vocab.encode(words) + [vocab.eos_id]
    with torch.no_grad():
        lp = model.next_token_log_probs(torch.tensor([ids[:-1]]))[0]
    return float(lp.gather(1, torch.tensor(ids[1:]).view(-1, 1)).sum())


def test_metrics_and_synthetic_emissions():
    assert edit_distance("kitten".split("t"), "sitting".split("t")) == 2
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert wer(["a b c d"], ["a x c"]) == 0.5 and cer(["ab"], ["ab"]) == 0.0
    rng = np.random.default_rng(0)
    clean = synth.emissions("the cat sat", rng, confusion=0.0, weak=0.0, noise=0.1)
    assert clean.shape[1] == len(synth.LABELS) and np.allclose(np.exp(clean).sum(1), 1, atol=1e-4)
    assert synth.greedy(clean) == "the cat sat"  # repeated letters survive: blanks come between them
    assert synth.greedy(synth.emissions("book keeper", rng, confusion=0.0, weak=0.0, noise=0.1)) == "book keeper"
    noisy = [synth.greedy(synth.emissions("the cat sat on the mat", rng)) for _ in range(20)]
    assert wer(["the cat sat on the mat"] * 20, noisy) > 0.1  # confusions make errors
    assert synth.normalize("The @-@ cat , 1990 don't") == "the cat don't"


def test_pyctcdecode_language_model_scores_are_the_models(tiny_lm):
    from gcnn.asr.pyctcdecode import GcnnLanguageModel

    model, _, _ = tiny_lm
    lm = GcnnLanguageModel(model, alpha=0.7, beta=1.5, unk_score_offset=-10.0)
    assert lm.order == model.receptive_field + 1  # pyctcdecode keeps order - 1 words: the receptive field
    state = lm.get_start_state()
    total = 0.0
    words = ["the", "cat", "sat", "on", "a", "tree"]
    for i, word in enumerate(words):
        score, state = lm.score(state, word, is_last_word=i == len(words) - 1)
        total += score
    expected = 0.7 * sentence_log_prob(model, words) + 1.5 * len(words)
    assert total == pytest.approx(expected, abs=1e-4)
    # unknown words: <unk>'s log-probability plus the offset; partial words: the offset once not a prefix
    oov, _ = lm.score(lm.get_start_state(), "zebra")
    unk, _ = lm.score(lm.get_start_state(), "<unk>")
    assert oov == pytest.approx(unk + 0.7 * -10.0, abs=1e-5)
    assert lm.score_partial_token("ca") == 0.0 and lm.score_partial_token("cq") == -10.0
    assert lm.score_partial_token("qqqqqqqqq") == pytest.approx(-15.0)
    lm.reset_params(alpha=0.1, beta=0.0)
    assert lm.alpha == 0.1 and lm.beta == 0.0
    with pytest.raises(ConfigError, match="alpha"):
        GcnnLanguageModel(model, alpha="high")


def test_both_decoders_decode_with_the_lm_and_it_lowers_errors(tiny_lm):
    from flashlight.lib.text.decoder import (
        CriterionType, LexiconDecoder, LexiconDecoderOptions, LexiconFreeDecoder, LexiconFreeDecoderOptions,
    )
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC

    from gcnn.asr.flashlight import GcnnFlashlightLM, lexicon_trie
    from gcnn.asr.pyctcdecode import GcnnLanguageModel

    model, refs, emissions = tiny_lm
    vocab = model.vocab
    alphabet = Alphabet.build_alphabet(synth.LABELS)
    results = {}
    # pyctcdecode
    plain = BeamSearchDecoderCTC(alphabet)
    with_lm = BeamSearchDecoderCTC(alphabet, language_model=GcnnLanguageModel(model, alpha=0.5, beta=1.0))
    results["pyctcdecode"] = [[d.decode(e, beam_width=16) for e in emissions] for d in (plain, with_lm)]

    def run(decoder, e):
        e = np.ascontiguousarray(e, dtype=np.float32)
        return decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])[0]

    # flashlight, lexicon: words are the model's vocabulary ids, spelled with their letters and the separator
    lm = GcnnFlashlightLM(model)
    spellings = {w: [synth.INDEX[c] for c in w] + [1] for w in vocab.itos if w not in ("<s>", "</s>", "<unk>")}
    trie = lexicon_trie(lm, spellings, len(synth.LABELS), 1)
    hyps = []
    for weight in (0.0, 1.0):
        options = LexiconDecoderOptions(
            beam_size=16, beam_size_token=10, beam_threshold=25, lm_weight=weight, word_score=0.5,
            unk_score=-math.inf, sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC,
        )
        decoder = LexiconDecoder(options, trie, lm, 1, 0, vocab.unk_id, [], False)
        hyps.append([" ".join(vocab.itos[i] for i in run(decoder, e).words if i >= 0) for e in emissions])
    results["flashlight lexicon"] = hyps
    # flashlight, lexicon-free: the LM spells words from the characters
    spelling_lm = GcnnFlashlightLM(model, tokens=synth.LABELS, separator=1)
    hyps = []
    for weight in (0.0, 1.0):
        options = LexiconFreeDecoderOptions(
            beam_size=16, beam_size_token=10, beam_threshold=25, lm_weight=weight, sil_score=0.0, log_add=False,
            criterion_type=CriterionType.CTC,
        )
        decoder = LexiconFreeDecoder(options, spelling_lm, 1, 0, [])
        texts = []
        for e in emissions:
            chars, previous = [], -1
            for t in run(decoder, e).tokens:
                if t != previous and t > 0:
                    chars.append(synth.LABELS[t])
                previous = t
            texts.append(" ".join("".join(chars).split()))
        hyps.append(texts)
    results["flashlight lexicon-free"] = hyps
    greedy = wer(refs, [synth.greedy(e) for e in emissions])
    assert greedy > 0.3  # the emissions are hard
    for name, (without, with_) in results.items():
        assert wer(refs, with_) < 0.5 * wer(refs, without), name
        assert cer(refs, with_) < cer(refs, without), name
        assert wer(refs, with_) < 0.2, (name, wer(refs, with_))
    # the LM's scores reached the decoder: the lexicon decoder's LM score of its best path is the model's
    options = LexiconDecoderOptions(
        beam_size=16, beam_size_token=10, beam_threshold=25, lm_weight=1.0, word_score=0.0,
        unk_score=-math.inf, sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC,
    )
    best = run(LexiconDecoder(options, trie, lm, 1, 0, vocab.unk_id, [], False), emissions[0])
    words = [vocab.itos[i] for i in best.words if i >= 0]
    assert best.lmScore == pytest.approx(sentence_log_prob(model, words), abs=1e-3)


def test_flashlight_lm_refuses_bad_setups(tiny_lm):
    from gcnn.asr.flashlight import GcnnFlashlightLM, lexicon_trie

    model, _, _ = tiny_lm
    with pytest.raises(ConfigError, match="separator"):
        GcnnFlashlightLM(model, tokens=synth.LABELS)
    with pytest.raises(ConfigError, match="outside the model's vocabulary: 'zebra'"):
        lexicon_trie(GcnnFlashlightLM(model), {"zebra": [3, 4]}, len(synth.LABELS), 1)
    bare = gcnn.build_model("gcnn-tiny", vocab_size=10)
    with pytest.raises(ConfigError, match="start_id"):
        GcnnFlashlightLM(bare)
