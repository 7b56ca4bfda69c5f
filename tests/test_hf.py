"""Hugging Face transformers: exported folders load with AutoModelForCausalLM / AutoTokenizer (remote code, or
gcnn.hf.register()), logits are gcnn's log-probabilities, greedy generate() is `gcnn generate --greedy`, the cache
makes each generated token one single-token call, and the tokenizer encodes WikiText-2 exactly as gcnn does."""

import collections
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

import gcnn  # noqa: E402
from gcnn.cli import main  # noqa: E402
from gcnn.data.text import TextFile, unit_texts, word_tokenizer  # noqa: E402
from gcnn.data.vocab import Vocabulary  # noqa: E402
from gcnn.decoding import ids_to_text  # noqa: E402
from gcnn.io import load, save_pretrained  # noqa: E402
from test_evaluate import word_vocab  # noqa: E402

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

ARCHS = ["gcnn-tiny", "lstm-tiny", "transformer-tiny"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def export(folder, arch="gcnn-tiny", sentences=False, seed=0):
    vocab = word_vocab(sentences)
    torch.manual_seed(seed)
    model = gcnn.build_model(arch, vocab_size=len(vocab), adaptive_cutoffs=())
    with torch.no_grad():  # a peaked distribution, so greedy choices are not ties
        for p in model.parameters():
            p.mul_(3.0)
    return save_pretrained(model, folder, vocab)


@pytest.mark.parametrize("sentences", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_are_gcnn_log_probs_and_labels_give_gcnn_loss(tmp_path, arch, sentences):
    folder = export(tmp_path / "m", arch, sentences)
    assert load(folder).config.model_type == gcnn.build_model(arch, vocab_size=20).config.model_type  # gcnn reads it
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    lm = load(folder)
    assert type(model).__name__ == "GCNNForCausalLM" and not model.training
    ids = tokenizer(["the cat sat on a mat"], return_tensors="pt").input_ids
    start = lm.vocab.bos_id if sentences else lm.vocab.eos_id
    assert ids[0].tolist() == [start] + lm.vocab.encode("the cat sat on a mat".split())
    with torch.no_grad():
        out = model(ids, labels=ids)
        expected = lm.next_token_log_probs(ids)
        gcnn_out = lm(ids[:, :-1], ids[:, 1:])
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.log_softmax(out.logits, -1), out.logits, rtol=0, atol=1e-5)  # normalized
    assert out.loss.item() == pytest.approx(gcnn_out.loss.item(), rel=1e-5)
    context = lm.receptive_field if arch != "lstm-tiny" else 512
    assert model.config.max_position_embeddings == context


@pytest.mark.parametrize("sentences", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_is_gcnn_generate_greedy_one_token_per_step(tmp_path, capsys, arch, sentences):
    folder = export(tmp_path / "m", arch, sentences, seed=1)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    calls = []
    real = model.model.hidden_states
    model.model.hidden_states = lambda tokens, cache=None: calls.append(tuple(tokens.shape)) or real(tokens, cache)
    prompt = "the cat"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    assert calls[0] == (1, ids.shape[1]) and set(calls[1:]) == {(1, 1)}  # the prompt once, then one token a call
    assert len(calls) == len(new)
    assert main(["generate", str(folder), "--prompt", prompt, "--greedy", "--max-tokens", "12", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])["text"]
    vocab = load(folder).vocab
    assert ids_to_text(vocab, new) == printed
    if sentences and new[-1] == vocab.eos_id:
        assert len(new) <= 12
    else:
        assert len(new) == 12


def test_sampling_through_logits_processors_and_beam_search(tmp_path):
    folder = export(tmp_path / "m", seed=2)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    lm = load(folder)
    ids = torch.tensor([[lm.vocab.eos_id, 0, 1]])
    torch.manual_seed(0)
    out = model.generate(ids, max_new_tokens=10, do_sample=True, top_k=3, temperature=0.7)
    sequence = out[0].tolist()
    for t in range(ids.shape[1], len(sequence)):
        with torch.no_grad():
            top = lm.next_token_log_probs(torch.tensor([sequence[:t]]))[0, -1].topk(3).indices.tolist()
        assert sequence[t] in top
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=True, top_k=1), greedy)
    beams = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)  # the cache is reordered
    assert beams.shape == (1, 9)


def test_pipeline_text_generation(tmp_path, capsys):
    folder = export(tmp_path / "m", seed=3)
    generator = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    text = generator("the cat", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert main(["generate", str(folder), "--prompt", "the cat", "--greedy", "--max-tokens", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])["text"]  # <eos> as line breaks
    assert text == "the cat " + " ".join(printed.split())


def test_register_loads_without_remote_code_and_padding_rules(tmp_path):
    from gcnn.hf import GCNNForCausalLM, register

    folder = export(tmp_path / "m")
    register()
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "gcnn" and config.gcnn_config["model_type"] == "gcnn"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, GCNNForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.unk_token  # no pad token of its own (as lm-eval does; any id works on the right)
    batch = tokenizer(["the cat sat", "a dog"], padding=True, return_tensors="pt")
    assert tokenizer.padding_side == "right"
    with torch.no_grad():
        padded = model(**batch).logits
        alone = model(tokenizer(["a dog"], return_tensors="pt").input_ids).logits
    # right padding changes nothing (up to the rounding of another batch size)
    torch.testing.assert_close(padded[1, : alone.shape[1]], alone[0], atol=1e-4, rtol=1e-5)
    left = batch["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="left padding"):
        model(input_ids=batch["input_ids"], attention_mask=left)
    # HF's save_pretrained writes a gcnn exported folder again
    model.save_pretrained(tmp_path / "again")
    assert torch.equal(load(tmp_path / "again").embed.weight, load(folder).embed.weight)


def test_remote_code_in_a_fresh_offline_process(tmp_path):
    folder = export(tmp_path / "m")
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        f"t = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "ids = t('the cat', return_tensors='pt').input_ids\n"
        "print(type(m).__name__, m.generate(ids, max_new_tokens=3, do_sample=False)[0].tolist())\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    name, tokens = done.stdout.split(" ", 1)
    assert name == "GCNNForCausalLM" and len(json.loads(tokens)) == 3 + 3


# ------------------------------------------------------------------------------------------------ the tokenizer
def corpus_ids(path, vocab):
    """The ids gcnn prepare gives a wikitext-format file: each line's tokens then <eos>."""
    tokens = word_tokenizer(vocab.splitter, vocab.lowercase)
    ids = []
    for lines in TextFile(path).line_chunks():
        ids += vocab.encode(tokens(unit_texts("wikitext", lines, vocab.eos), vocab.eos))
    return ids


@pytest.mark.parametrize("splitter,lowercase", [("whitespace", False), ("punct", True)])
def test_tokenizer_encodes_the_wikitext2_test_split_as_gcnn(tmp_path, shared_data, splitter, lowercase):
    path = shared_data / "wikitext-2" / "wiki.test.tokens"
    text = path.read_text(encoding="utf-8-sig")
    counts = collections.Counter(word_tokenizer(splitter, lowercase)(text.splitlines(True), "<eos>"))
    vocab = Vocabulary.from_counts(counts, max_size=5000, splitter=splitter, lowercase=lowercase)  # OOVs too
    torch.manual_seed(0)
    folder = save_pretrained(gcnn.build_model("gcnn-tiny", vocab_size=len(vocab)), tmp_path / "m", vocab)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    expected = corpus_ids(path, vocab)
    got = tokenizer(text, add_special_tokens=False).input_ids
    assert len(got) == len(expected) > 240_000
    assert got == expected
    assert vocab.unk_id in got  # the vocabulary was cut, so unknown words were met
    line = "Hello , World 's end ."
    assert tokenizer(line).input_ids == [vocab.eos_id] + vocab.encode(vocab.tokenize(line))


def test_bpe_vocabulary_tokenizer_gives_gcnn_ids(tmp_path, shared_data):
    pytest.importorskip("tokenizers")
    import numpy as np

    from gcnn.data.bpe import frequency_order, train_bpe

    lines = (shared_data / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8").splitlines()[:3000]
    texts = [" ".join(line.split()) for line in lines]
    bpe = train_bpe(texts, vocab_size=600, special_tokens=["<unk>", "<eos>"])
    raw = np.bincount([i for e in bpe.encode_batch(texts, add_special_tokens=False) for i in e.ids],
                      minlength=bpe.get_vocab_size())
    pieces, counts, _ = frequency_order(bpe, raw, bos=None)
    vocab = Vocabulary(pieces, counts=counts, splitter="bpe", bpe_json=bpe.to_str())
    assert vocab.itos != [bpe.id_to_token(i) for i in range(len(vocab))]  # gcnn's ids differ from the tokenizer's
    torch.manual_seed(0)
    folder = save_pretrained(gcnn.build_model("gcnn-tiny", vocab_size=len(vocab)), tmp_path / "m", vocab)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    for line in lines[:1000] + ["  Two   spaces\tand a tab  "]:
        assert tokenizer(line, add_special_tokens=False).input_ids == vocab.encode(vocab.tokenize(line)), line
