"""Early stopping on validation (patience, min_delta), exact resume of its state, and the on_validation hook."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import gcnn
from gcnn.errors import ConfigError
from gcnn.train import ValidationEvent, build_config, load_run_config, train
from gcnn.train import checkpoint as ckpt
from test_train import last_weights, make_config, prepared, train_losses  # noqa: F401  (the fixture)

# validation loss by update (valid_every = 1); min_delta 0.1, patience 3:
# 1: 1.0 best; 2: 0.5 improves by 0.5; 3: 0.45 the best model but not better by min_delta (1 stale);
# 4: 0.6 (2 stale); 5: 0.55 (3 stale: stop). The run's model is update 3's.
VALID = {1: 1.0, 2: 0.5, 3: 0.45, 4: 0.6, 5: 0.55}
EARLY = ("valid_every=1", "early_stop_patience=3", "min_delta=0.1", "model.dropout=0.2", "keep_last=1")


@pytest.fixture
def scripted_validation(monkeypatch):
    monkeypatch.setattr("gcnn.train.trainer.Trainer._validation_loss", lambda self: VALID.get(self.update, 0.7))


def test_early_stopping_stops_after_patience_and_keeps_the_best_model(prepared, tmp_path, scripted_validation):
    run = tmp_path / "run"
    result = train(make_config(prepared, run, *EARLY, max_updates=20), silent=True)
    assert result.stop_reason == "early_stop" and result.updates == 5
    assert "update 3" in result.stop_detail and "early stopping" in result.summary()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["stop_reason"] == "early_stop" and info["best_update"] == 3
    assert info["early_stopping"] == {"patience": 3, "min_delta": 0.1, "validations_without_improvement": 3}
    assert "3 validations in a row" in info["stop_detail"]
    # the run folder's model (what gcnn eval and gcnn export read) is the best checkpoint's, not the last update's
    names = [p.name for p in ckpt.list_checkpoints(run)]
    assert names == ["update_00000003", "update_00000005"]
    best = load_file(str(run / "checkpoints" / "update_00000003" / "model.safetensors"))
    folder = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(best[k], folder[k]) for k in best)
    assert not all(torch.equal(best[k], v) for k, v in last_weights(run).items())
    loaded = gcnn.load(run)
    assert all(torch.equal(loaded.state_dict()[k], best[k]) for k in best)


def test_resume_keeps_the_early_stopping_state_exactly(prepared, tmp_path, scripted_validation):
    """Stopped at update 4 with 2 stale validations, resumed: it stops at update 5 as the straight run does, with
    the same losses and weights (dropout on)."""
    straight = tmp_path / "straight"
    train(make_config(prepared, straight, *EARLY, max_updates=20), silent=True)
    split = tmp_path / "split"
    first = train(make_config(prepared, split, *EARLY, max_updates=4), silent=True)
    assert first.stop_reason == "max_updates"
    assert ckpt.load_latest(split).state["stale_validations"] == 2
    again = train(build_config(flags={"max_updates": 20}, base=load_run_config(split)), resume=True, silent=True)
    assert again.stop_reason == "early_stop" and again.updates == 5
    assert train_losses(split) == train_losses(straight)
    a, b = last_weights(straight), last_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_file(str(split / "model.safetensors")).keys() == load_file(str(straight / "model.safetensors")).keys()


def test_an_early_stopped_run_resumes_only_with_more_patience(prepared, tmp_path, scripted_validation):
    run = tmp_path / "run"
    train(make_config(prepared, run, *EARLY, max_updates=20), silent=True)
    same = train(build_config(flags={"max_updates": 20}, base=load_run_config(run)), resume=True, silent=True)
    assert same.stop_reason == "early_stop" and same.updates == 5  # nothing more to do
    more = train(build_config(sets=["early_stop_patience=5"], flags={"max_updates": 20}, base=load_run_config(run)),
                 resume=True, silent=True)
    assert more.stop_reason == "early_stop" and more.updates == 7  # updates 6 and 7 score 0.7: stale 4, 5


def test_on_validation_sees_every_scheduled_validation_and_can_stop_the_run(prepared, tmp_path, scripted_validation):
    events: list[ValidationEvent] = []

    def prune(event: ValidationEvent) -> bool:
        events.append(event)
        return event.update == 4

    run = tmp_path / "run"
    result = train(make_config(prepared, run, "valid_every=2", max_updates=20), silent=True, on_validation=prune)
    assert result.stop_reason == "on_validation" and result.updates == 4
    assert [e.update for e in events] == [2, 4]
    assert math.isclose(events[0].loss, 0.5) and math.isclose(events[0].ppl, math.exp(0.5))
    assert math.isclose(events[1].best_ppl, math.exp(0.5)) and events[1].seconds > events[0].seconds > 0
    info = json.loads((run / "run.json").read_text())
    assert info["stop_reason"] == "on_validation" and "callback" in info["stop_detail"]
    # a callback that never says stop changes nothing
    quiet = train(make_config(prepared, tmp_path / "q", "valid_every=2", max_updates=6), silent=True,
                  on_validation=lambda event: None)
    assert quiet.stop_reason == "max_updates" and quiet.updates == 6  # 0.7 from update 6 on: no patience, no stop
    assert json.loads((tmp_path / "q" / "run.json").read_text())["early_stopping"] is None


@pytest.mark.parametrize("item,message", [("early_stop_patience=-1", "early_stop_patience must be >= 0"),
                                          ("min_delta=-0.5", "min_delta must be >= 0")])
def test_bad_early_stopping_values_name_the_key(prepared, tmp_path, item, message):
    with pytest.raises(ConfigError, match=message):
        make_config(prepared, tmp_path / "run", item)
