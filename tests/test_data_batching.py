"""Batching: stream and sentence modes, determinism from (seed, epoch), resume, ranks."""

import numpy as np
import pytest
import torch

from gcnn.lm import IGNORE_INDEX
from gcnn.data import Batches, PreparedData, batches, find_corpus, num_batches, prepare
from gcnn.errors import ConfigError, DataError

IDS = np.arange(1, 202)  # 201 distinct ids: every target value says where it came from


def as_lists(it):
    return [(x.tolist(), y.tolist()) for x, y in it]


def stream(**options):
    defaults = dict(mode="stream", batch_size=4, context=10, seed=1, epoch=0)
    return as_lists(batches(IDS, **{**defaults, **options}))


# ------------------------------------------------------------------------------------------------------ stream
def test_stream_targets_are_the_next_ids_of_contiguous_blocks():
    for x, y in batches(IDS, mode="stream", batch_size=4, context=10, seed=0, epoch=0):
        assert x.dtype == torch.int64 and x.shape == y.shape == (4, 10)
        assert torch.equal(y, x + 1)  # targets[:, t] = ids[s + t + 1]
        assert ((x[:, 0] - 1) % 10 == 0).all()  # blocks start at multiples of the context


def test_unshuffled_pass_covers_the_split_in_order():
    got = stream(shuffle=False, batch_size=3, context=7)
    assert len(got) == num_batches(IDS, mode="stream", batch_size=3, context=7, shuffle=False)
    targets = [t for _, y in got for row in y for t in row if t != IGNORE_INDEX]
    assert targets == IDS[1:].tolist()  # every target exactly once, in order, the short tail included
    # 200 targets = 28 blocks of 7 + a tail of 4: 29 rows, the last batch holds 2, the tail padded
    assert len(got) == 10 and len(got[-1][1]) == 2
    assert got[-1][1][-1] == [198, 199, 200, 201] + [IGNORE_INDEX] * 3


def test_epoch_is_deterministic_from_seed_and_epoch_and_covers_each_block_once():
    a, b = stream(epoch=3), stream(epoch=3)
    assert a == b
    assert stream(epoch=4) != a and stream(seed=2, epoch=3) != a
    starts = sorted(row[0] for x, _ in a for row in x)
    assert starts == [1 + 10 * i for i in range(20)]  # 200 targets = 20 blocks = 5 batches of 4, each once


def test_shuffled_epochs_drop_only_the_incomplete_last_batch():
    assert num_batches(IDS, mode="stream", batch_size=3, context=10) == 6  # 20 blocks // 3
    assert num_batches(IDS, mode="stream", batch_size=3, context=10, shuffle=False) == 7  # 20 rows, last batch of 2
    assert all(len(x) == 3 and len(x[0]) == 10 for x, _ in stream(batch_size=3))


def test_resume_with_start_gives_the_remaining_batches():
    full = stream(epoch=2)
    for k in range(len(full) + 1):
        assert stream(epoch=2, start=k) == full[k:]
    assert len(Batches(IDS, mode="stream", batch_size=4, context=10, start=2)) == 3
    with pytest.raises(ConfigError, match="start=6"):
        Batches(IDS, mode="stream", batch_size=4, context=10, start=6)


def test_ranks_get_the_halves_of_the_global_batch_and_are_disjoint():
    whole = stream(batch_size=4, epoch=1)
    ranks = [stream(batch_size=4, epoch=1, rank=r, world_size=2) for r in range(2)]
    for b, (x, y) in enumerate(whole):
        assert ranks[0][b] == (x[:2], y[:2]) and ranks[1][b] == (x[2:], y[2:])
    seen = [{t for _, y in r for row in y for t in row} for r in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {t for _, y in whole for row in y for t in row}
    four = [stream(batch_size=4, epoch=1, rank=r, world_size=4) for r in range(4)]
    assert [four[r][0][0][0] for r in range(4)] == whole[0][0]
    with pytest.raises(ConfigError, match="not divisible by world_size 3"):
        stream(world_size=3)


def test_corpus_shorter_than_the_context_is_a_clear_error():
    with pytest.raises(DataError, match="shorter than one block of context 300"):
        stream(context=300)
    with pytest.raises(DataError, match="fewer than one batch of 64"):
        stream(batch_size=64)


# ------------------------------------------------------------------------------------------------------ sentences
BOS, EOS = 99, 0
SENTENCES = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [18, 19], [20, 21, 22, 23], [24]]
SENT_IDS = np.array([t for s in SENTENCES for t in s + [EOS]])


def sentence_batches(**options):
    defaults = dict(mode="sentence", batch_size=2, context=6, bos_id=BOS, eos_id=EOS, seed=0, epoch=0)
    return as_lists(batches(SENT_IDS, **{**defaults, **options}))


def test_sentence_rows_start_with_bos_end_with_eos_and_pad_with_ignore():
    got = sentence_batches(shuffle=False)
    x, y = got[0]
    assert x == [[BOS, 5, 6, 7], [BOS, 8, EOS, EOS]]
    assert y == [[5, 6, 7, EOS], [8, EOS, IGNORE_INDEX, IGNORE_INDEX]]
    # the 10-target sentence is cut into 6 + 4, the second part continuing from its previous token
    x, y = got[1]
    assert x[0] == [BOS, 9, 10, 11, 12, 13] and y[0] == [9, 10, 11, 12, 13, 14]
    assert x[1][:4] == [14, 15, 16, 17] and y[1] == [15, 16, 17, EOS, IGNORE_INDEX, IGNORE_INDEX]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sentence_token_is_a_target_once_and_bos_never(shuffle):
    got = sentence_batches(shuffle=shuffle, drop_last=False, batch_size=3)
    targets = [t for _, y in got for row in y for t in row if t != IGNORE_INDEX]
    assert sorted(targets) == sorted(SENT_IDS.tolist())
    assert BOS not in targets
    n_counted = sum((torch.tensor(y) != IGNORE_INDEX).sum().item() for _, y in got)
    assert n_counted == len(SENT_IDS)


def test_sentence_batching_is_deterministic_and_resumable():
    ids = np.concatenate([np.r_[np.arange(1, 1 + n), EOS] for n in np.random.default_rng(0).integers(1, 30, 300)])
    opts = dict(mode="sentence", batch_size=8, context=16, bos_id=BOS, eos_id=EOS, seed=5, epoch=1)
    a = as_lists(batches(ids, **opts))
    assert a == as_lists(batches(ids, **opts))
    assert a != as_lists(batches(ids, **{**opts, "epoch": 2}))
    assert as_lists(batches(ids, **opts, start=7)) == a[7:]
    # length bucketing: rows of a batch have similar lengths (sorted within windows of 100 batches)
    widths = [len(y[0]) for _, y in a]
    padding = sum(r.count(IGNORE_INDEX) for _, y in a for r in y)
    assert padding < 0.1 * sum(len(y) * w for (_, y), w in zip(a, widths))


def test_sentence_ranks_are_halves_padded_to_the_global_width():
    ids = np.concatenate([np.r_[np.arange(1, 1 + n), EOS] for n in np.random.default_rng(1).integers(1, 9, 40)])
    opts = dict(mode="sentence", batch_size=4, context=8, bos_id=BOS, eos_id=EOS, seed=3, epoch=0)
    whole = as_lists(batches(ids, **opts))
    halves = [as_lists(batches(ids, **opts, rank=r, world_size=2)) for r in range(2)]
    for b, (x, y) in enumerate(whole):
        assert halves[0][b] == (x[:2], y[:2]) and halves[1][b] == (x[2:], y[2:])


def test_sentence_mode_needs_its_markers():
    with pytest.raises(ConfigError, match="bos_id and eos_id"):
        batches(SENT_IDS, mode="sentence", batch_size=2, context=4)
    with pytest.raises(DataError, match="must end with </s>"):
        Batches(SENT_IDS[:-1], mode="sentence", batch_size=2, context=4, bos_id=BOS, eos_id=EOS)


# ------------------------------------------------------------------------------------------------------ from a folder
@pytest.fixture
def prepared_sentences(tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_text("the cat sat\na dog\nthe end of it all\n" * 3)
    return prepare(find_corpus(folder), tmp_path / "out")


def test_batches_from_a_prepared_folder_use_its_mode_and_markers(prepared_sentences):
    data = prepared_sentences
    got = list(batches(data, split="valid", batch_size=3, context=8, shuffle=False))
    assert len(got) == 3
    x, y = got[0]
    assert (x[:, 0] == data.vocab.bos_id).all()
    assert data.vocab.decode([t for t in y[0].tolist() if t != IGNORE_INDEX]) == ["the", "cat", "sat", "</s>"]
    assert not (y == data.vocab.bos_id).any()


def test_a_damaged_id_found_while_batching_is_reported(prepared_sentences):
    data = PreparedData.open(prepared_sentences.path)
    ids = np.memmap(data.path / "train.bin", dtype=np.uint16, mode="r+")
    ids[1] = 65000
    ids.flush()
    with pytest.raises(DataError, match="id 65000 is out of range"):
        list(batches(data, batch_size=3, context=8, shuffle=False))
