"""Generation: incremental decoding equals the full pass, batching, determinism, filters, `gcnn generate`."""

import json
import math

import pytest
import torch

from gcnn.cli import main
from gcnn.config import GATES, Block, ModelConfig
from gcnn.decoding import (
    UnknownWordWarning,
    apply_temperature,
    choose_next,
    encode_prompt,
    generate,
    generate_text,
    ids_to_text,
    top_k_filter,
    top_p_filter,
)
from gcnn.errors import ConfigError
from gcnn.io import load
from gcnn.model import GatedConvLM
from test_evaluate import make_run, tiny_model, word_vocab

V = 40


def variant(gate: str, placement: str, cutoffs=(10, 25), seed: int = 0) -> GatedConvLM:
    """Plain, residual (with a projection) and bottleneck blocks, k from 1 to 4."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=V,
        embed_dim=6,
        blocks=(
            Block(((4, 8),), residual=False),
            Block(((2, 8), (3, 8)), repeat=2),
            Block(((1, 4), (3, 4), (1, 10))),
        ),
        gate=gate,
        gate_placement=placement,
        adaptive_cutoffs=cutoffs,
        residual_scale=placement == "block",
    )
    return GatedConvLM(config).eval()


VARIANTS = [(g, p) for g in GATES for p in ("layer", "block")]


def naive_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding that re-runs the whole sequence at every step (no cache)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            seq.append(int(model.next_token_log_probs(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("gate,placement", VARIANTS)
def test_step_by_step_log_probs_equal_full_pass(gate, placement):
    model = variant(gate, placement)
    tokens = torch.randint(0, V, (3, 15))
    with torch.no_grad():
        full = model.next_token_log_probs(tokens)
        cache = model.new_cache(3)
        pieces, start = [], 0
        for size in (5, 1, 3, 1, 1, 4):  # a prefill, then single steps and chunks
            pieces.append(model.next_token_log_probs(tokens[:, start : start + size], cache=cache))
            start += size
    steps = torch.cat(pieces, dim=1)
    assert steps.shape == full.shape
    assert torch.allclose(steps, full, atol=1e-5), (steps - full).abs().max()


@pytest.mark.parametrize("gate,placement", VARIANTS)
def test_greedy_generation_equals_naive_decoding(gate, placement):
    model = variant(gate, placement, cutoffs=())
    prompt = [1, 7, 3]
    assert generate(model, [prompt], max_tokens=12, greedy=True) == [naive_greedy(model, prompt, 12)]


def test_greedy_is_deterministic_and_batches_equal_one_by_one():
    model = variant("glu", "layer", seed=3)
    prompts = [[0, 5], [0, 9, 9, 2, 17, 30], [0], [0, 1, 2, 3]]
    batched = generate(model, prompts, max_tokens=9, greedy=True)
    assert batched == generate(model, prompts, max_tokens=9, greedy=True)
    assert batched == [generate(model, [p], max_tokens=9, greedy=True)[0] for p in prompts]
    assert batched == [naive_greedy(model, p, 9) for p in prompts]
    assert all(len(out) == 9 for out in batched)


def test_sampling_is_reproducible_with_a_seed():
    model = variant("glu", "layer", seed=4)
    prompts = [[0, 3], [0]]
    a = generate(model, prompts, max_tokens=20, seed=7)
    assert a == generate(model, prompts, max_tokens=20, seed=7)
    assert a != generate(model, prompts, max_tokens=20, seed=8)
    # top-k = 1 is greedy
    assert generate(model, prompts, max_tokens=8, top_k=1, seed=1) == generate(
        model, prompts, max_tokens=8, greedy=True
    )


def test_generation_stops_at_eos_per_row_and_skips_banned_ids():
    model = variant("glu", "layer", seed=5)
    free = generate(model, [[0, 4], [0, 8, 8]], max_tokens=15, greedy=True)
    eos = free[0][2]  # make the third greedy token of the first row the eos
    out = generate(model, [[0, 4], [0, 8, 8]], max_tokens=15, greedy=True, eos_id=eos)
    assert out[0] == free[0][: free[0].index(eos) + 1]
    assert out[1] == (free[1][: free[1].index(eos) + 1] if eos in free[1] else free[1])
    banned = sorted(set(free[0]))
    sampled = generate(model, [[0, 4]] * 4, max_tokens=30, banned_ids=banned, seed=0)
    assert all(t not in banned for row in sampled for t in row)
    assert generate(model, [[0]], max_tokens=0) == [[]]


def test_generation_restores_training_mode_and_ignores_dropout():
    model = tiny_model(dropout=0.5).train()
    a = generate(model, [[0, 1]], max_tokens=10, greedy=True)
    assert a == generate(model, [[0, 1]], max_tokens=10, greedy=True)
    assert model.training


# --------------------------------------------------------------------------------------------- filters
def test_top_k_filter():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    out = top_k_filter(logits, 2)
    assert torch.isinf(out).tolist() == [[True, False, False, True], [True, True, False, False]]
    assert torch.equal(out[~torch.isinf(out)], logits[~torch.isinf(out)])
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_filter_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: (~torch.isinf(top_p_filter(logits, p))).tolist()[0]  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.8) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert (~torch.isinf(top_p_filter(shuffled, 0.6))).tolist()[0] == [False, True, False, True]


def test_temperature_and_sampling_follow_the_filtered_distribution():
    log_probs = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    assert torch.allclose(torch.softmax(apply_temperature(log_probs, 1.0), -1), log_probs.exp())
    sharp = torch.softmax(apply_temperature(log_probs, 0.5), -1)[0]
    assert sharp[0] > 0.6 and math.isclose(float(sharp.sum()), 1.0, rel_tol=1e-6)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([choose_next(log_probs, top_k=2, generator=generator) for _ in range(2000)])
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 2 / 3) < 0.05
    assert choose_next(log_probs, greedy=True).tolist() == [0]


@pytest.mark.parametrize(
    "options,name",
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"max_tokens": -1}, "max_tokens must be a non-negative integer"),
    ],
)
def test_bad_sampling_options(options, name):
    kwargs = {"max_tokens": 3, **options}
    with pytest.raises(ConfigError, match=name):
        generate(variant("glu", "layer"), [[0]], **kwargs)


# --------------------------------------------------------------------------------------------- text
def test_prompt_words_outside_the_vocabulary_become_unk_with_a_warning():
    vocab = word_vocab()
    with pytest.warns(UnknownWordWarning, match="zebra"):
        ids = encode_prompt(vocab, "the zebra sat")
    assert ids == [vocab.eos_id, vocab.stoi["the"], vocab.unk_id, vocab.stoi["sat"]]
    sentence_vocab = word_vocab(sentences=True)
    assert encode_prompt(sentence_vocab, "")[0] == sentence_vocab.bos_id


def test_ids_to_text():
    vocab = word_vocab()
    ids = vocab.encode(["the", "cat", "<eos>", "sat", "<eos>"])
    assert ids_to_text(vocab, ids) == "the cat\nsat"


def test_generate_text_from_python(tmp_path):
    model = load(make_run(tmp_path / "run", word_vocab(sentences=True), adaptive_cutoffs=()))
    vocab = model.vocab
    texts = generate_text(model, vocab, ["the cat", "a"], max_tokens=6, seed=0, allow_unk=False)
    assert len(texts) == 2
    for text in texts:
        words = text.split()
        assert len(words) <= 6 and "<unk>" not in words and "<s>" not in words and "</s>" not in words
    assert generate_text(model, vocab, "the cat", max_tokens=6, greedy=True) == generate_text(
        model, vocab, ["the cat"], max_tokens=6, greedy=True
    )


def test_cli_generate(tmp_path, capsys):
    run = make_run(tmp_path / "run", word_vocab(), adaptive_cutoffs=())
    args = ["generate", str(run), "--prompt", "the cat", "--prompt", "a quokka"]
    args += ["--max-tokens", "5", "--greedy", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["prompt"] for r in rows] == ["the cat", "a quokka"]
    assert "warning" in captured.err and "quokka" in captured.err
    model = load(run)
    vocab = model.vocab
    with pytest.warns(UnknownWordWarning):
        expected = generate_text(model, vocab, ["the cat", "a quokka"], max_tokens=5, greedy=True)
    assert [r["text"] for r in rows] == expected
    assert main(["generate", str(run), "--max-tokens", "4", "--num-samples", "3", "--seed", "1", "--top-p", "0.9"]) == 0
    assert len([b for b in capsys.readouterr().out.split("\n\n") if b.strip()]) <= 3
    assert main(["generate", str(run), "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["lstm-tiny", "transformer-tiny"])
def test_generation_works_with_the_baselines(arch):
    import gcnn

    torch.manual_seed(0)
    model = gcnn.build_model(arch, vocab_size=80).eval()
    prompts = [[0, 5, 6], [0], [0, 1, 2, 3, 4]]
    batched = generate(model, prompts, max_tokens=7, greedy=True)
    assert batched == [naive_greedy(model, p, 7) for p in prompts]


def test_bf16_weights_decode_close_to_fp32():
    """--dtype bf16: the model's weights in bf16, log-probabilities still normalised float32, close to fp32."""
    model = variant("glu", "layer", seed=3)
    tokens = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        ref = model.next_token_log_probs(tokens)
    fast = variant("glu", "layer", seed=3).to(torch.bfloat16)
    cache = fast.new_cache(2)
    with torch.no_grad():
        steps = [fast.next_token_log_probs(tokens[:, :5], cache=cache)]
        steps += [fast.next_token_log_probs(tokens[:, t : t + 1], cache=cache) for t in range(5, 12)]
    out = torch.cat(steps, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 12), atol=1e-4)
    assert (out - ref).abs().max() < 0.05
    assert generate(fast, [[1, 2, 3]], max_tokens=6, greedy=True)[0] == generate(fast, [[1, 2, 3]], max_tokens=6, greedy=True)[0]


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_cli_generate_bf16_and_int8(tmp_path, capsys, dtype):
    run = make_run(tmp_path / "run", word_vocab(), adaptive_cutoffs=())
    assert main(["generate", str(run), "--prompt", "the cat", "--max-tokens", "4", "--greedy", "--dtype", dtype]) == 0
    assert capsys.readouterr().out.strip()


def test_cli_generate_int8_refuses_a_model_without_convolutions(tmp_path, capsys):
    run = make_run(tmp_path / "lstm", word_vocab(), arch="lstm-tiny", adaptive_cutoffs=())
    assert main(["generate", str(run), "--prompt", "the", "--max-tokens", "2", "--dtype", "int8"]) == 2
    assert "--dtype int8 is for GCNN models" in capsys.readouterr().err
