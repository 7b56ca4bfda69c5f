"""gcnn.Scorer: every hypothesis' scores equal a full forward pass over its history, for the GCNN, the LSTM and the
Transformer; batching changes no score; equal histories are one state; the cache keeps its memory bound."""

import random

import pytest
import torch

import gcnn
from gcnn.errors import ConfigError
from gcnn.scorer import Scorer, State

V = 40
START, EOS = 38, 39
# a GCNN with residual blocks, a k=1 projection and an adaptive softmax; the baselines at test size
MODELS = {
    "gcnn": ("gcnn-tiny", dict(adaptive_cutoffs=(10, 25))),
    "lstm": ("lstm-tiny", dict(adaptive_cutoffs=())),
    "transformer": ("transformer-tiny", dict(adaptive_cutoffs=(12,))),
}


def build(kind, seed=0):
    torch.manual_seed(seed)
    name, overrides = MODELS[kind]
    return gcnn.build_model(name, vocab_size=V, **overrides).eval()


def full_pass(model, history):
    """log-distribution of the next token from one forward pass over exactly ``history`` (no cache)."""
    with torch.no_grad():
        return model.next_token_log_probs(torch.tensor([history]), positions=[-1])[0, 0]


def random_beam(scorer, rng, steps, width):
    """A beam-search-like walk: at each step every kept state is advanced by a few random tokens (in one batch),
    and ``width`` of the children are kept. Yields (children, their histories, their log-probs) per step."""
    beam = [(scorer.start(), [START])]
    for _ in range(steps):
        parents, tokens, histories = [], [], []
        for state, history in beam:
            for token in rng.sample(range(V - 2), 3):
                parents.append(state)
                tokens.append(token)
                histories.append(history + [token])
        children, log_probs = scorer.advance(parents, tokens)
        yield children, histories, log_probs
        keep = rng.sample(range(len(children)), min(width, len(children)))
        beam = [(children[i], histories[i]) for i in keep]


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_hypothesis_scores_as_a_full_forward_pass(kind):
    model = build(kind)
    scorer = Scorer(model, start_id=START, eos_id=EOS, cache_mb=64)
    rng = random.Random(0)
    checked = 0
    steps = 12 if kind != "transformer" else 10  # transformer-tiny's positions suffice
    for children, histories, log_probs in random_beam(scorer, rng, steps=steps, width=4):
        assert log_probs.shape == (len(children), V) and log_probs.dtype == torch.float32
        for i in rng.sample(range(len(children)), 3):
            expected = full_pass(model, histories[i])
            assert torch.allclose(log_probs[i], expected, atol=1e-5), (log_probs[i] - expected).abs().max()
            assert scorer.end_score(children[i]) == pytest.approx(float(expected[EOS]), abs=1e-5)
            checked += 1
    assert checked == 3 * steps
    assert scorer.stats["steps"] > 0  # the scores came from incremental steps, not re-runs
    # the check could fail: another model's scores differ
    other = build(kind, seed=1)
    assert (full_pass(other, histories[0]) - log_probs[0]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", list(MODELS))
def test_batching_changes_no_score(kind):
    model = build(kind)
    rng = random.Random(1)
    histories = [[rng.randrange(V - 2) for _ in range(rng.randrange(1, 9))] for _ in range(12)]
    batched = Scorer(model, start_id=START, eos_id=EOS)
    one_by_one = Scorer(model, start_id=START, eos_id=EOS)

    def walk(scorer, group):
        """Advance all histories in ``group`` token by token together (states of different lengths mix)."""
        states = {i: scorer.start() for i in group}
        out = {}
        for t in range(max(len(histories[i]) for i in group)):
            live = [i for i in group if t < len(histories[i])]
            children, lp = scorer.advance([states[i] for i in live], [histories[i][t] for i in live])
            for i, child, row in zip(live, children, lp):
                states[i] = child
                out[i] = row
        return out

    together = walk(batched, list(range(len(histories))))
    for i in range(len(histories)):
        alone = walk(one_by_one, [i])[i]
        assert torch.allclose(together[i], alone, atol=1e-5)
        assert torch.allclose(alone, full_pass(model, [START] + histories[i]), atol=1e-5)


def test_equal_histories_are_one_state_and_gcnn_states_forget_beyond_the_receptive_field():
    model = build("gcnn")
    scorer = Scorer(model, start_id=START, eos_id=EOS)
    window = model.receptive_field
    a = scorer.start()
    b = scorer.start()
    for token in [1, 2, 3]:
        a, b = scorer.child(a, token), scorer.child(b, token)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert scorer.child(a, 4) != scorer.child(a, 5)
    # two long histories that differ only before the last `window` tokens: one state, the same scores
    tail = [random.Random(2).randrange(V - 2) for _ in range(window)]
    x, y = [START, 5, 6] + tail, [START, 7] + tail
    sx, sy = scorer.start(), scorer.start()
    for token in x[1:]:
        (sx,), _ = scorer.advance([sx], [token])
    for token in y[1:]:
        (sy,), _ = scorer.advance([sy], [token])
    assert sx == sy
    assert torch.allclose(full_pass(model, x), full_pass(model, y), atol=1e-6)  # what makes merging them right
    # one token less in common: different states (and the model does tell them apart)
    assert scorer.child(scorer.start(), 5) != scorer.child(scorer.start(), 7)
    # an LSTM state is its whole history
    lstm = Scorer(build("lstm"), start_id=START, eos_id=EOS)
    s1, s2 = lstm.start(), lstm.start()
    for token in x[1:]:
        s1 = lstm.child(s1, token)
    for token in y[1:]:
        s2 = lstm.child(s2, token)
    assert s1 != s2


@pytest.mark.parametrize("kind", ["gcnn", "lstm"])
def test_cache_stays_within_its_bound_on_a_long_decode(kind):
    model = build(kind)
    limit_mb = 0.05
    scorer = Scorer(model, start_id=START, eos_id=EOS, cache_mb=limit_mb)
    rng = random.Random(3)
    largest = 0
    last = None
    for children, histories, log_probs in random_beam(scorer, rng, steps=40, width=8):
        largest = max(largest, scorer.cache_bytes)
        assert scorer.cache_bytes <= limit_mb * 1024 * 1024
        assert scorer.cache_bytes == sum(e.nbytes for e in scorer._cache.values())
        last = (histories, log_probs)
    assert scorer.stats["evicted"] > 0 and largest > 0.5 * limit_mb * 1024 * 1024
    # eviction changes no score: the last step against full passes
    histories, log_probs = last
    for i in (0, len(histories) // 2, len(histories) - 1):
        assert torch.allclose(log_probs[i], full_pass(model, histories[i]), atol=1e-5)
    # with no cache at all every state is recomputed from its tokens, with the same scores
    bare = Scorer(model, start_id=START, eos_id=EOS, cache_mb=0)
    state = bare.start()
    for token in histories[0][1:]:
        (state,), lp = bare.advance([state], [token])
    assert len(bare) == 0 and bare.stats["recomputed"] > 0
    assert torch.allclose(lp[0], log_probs[0], atol=1e-5)


def test_vocabulary_defaults_and_bad_arguments():
    vocab = gcnn.Vocabulary.from_counts({f"w{i}": 50 - i for i in range(V - 3)}, eos="</s>", bos="<s>")
    model = gcnn.build_model("gcnn-tiny", vocab_size=len(vocab), adaptive_cutoffs=())
    model.vocab = vocab
    scorer = Scorer(model)
    assert scorer.start() == State((vocab.bos_id,)) and scorer.eos_id == vocab.eos_id
    model.vocab = None
    with pytest.raises(ConfigError, match="start_id"):
        Scorer(model)
    with pytest.raises(ConfigError, match="cache_mb"):
        Scorer(model, start_id=0, eos_id=1, cache_mb=-1)
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        Scorer(model, start_id=0, eos_id=V + 5)


def test_a_gcnn_prepared_by_the_runtime_scores_the_same():
    from gcnn import runtime

    model = build("gcnn")
    fast = runtime.optimize(build("gcnn"), "fp32")
    scorer = Scorer(fast, start_id=START, eos_id=EOS)
    rng = random.Random(4)
    for children, histories, log_probs in random_beam(scorer, rng, steps=9, width=3):
        for i in (0, len(children) - 1):
            assert torch.allclose(log_probs[i], full_pass(model, histories[i]), atol=1e-4)
