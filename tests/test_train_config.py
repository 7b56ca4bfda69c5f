"""Training configuration (layers, key and type checks, the recipes in configs/), optimisers and schedules."""

import math
from pathlib import Path

import pytest
import torch

import gcnn
from gcnn.config import ModelConfig
from gcnn.errors import ConfigError
from gcnn.train import TrainConfig, build_config, load_recipe, resolve_model_config
from gcnn.train.config import parse_set
from gcnn.train.optim import Schedule, build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REQUIRED = {"data": "d", "out": "o", "max_updates": 10}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_layers_defaults_recipe_set_flags(tmp_path):
    recipe = write(tmp_path / "r.toml", '[model]\narch = "gcnn-tiny"\ndropout = 0.1\n'
                   '[train]\nlr = 0.5\nbatch_size = 4\ncontext = 32\n')
    config = build_config(recipe=recipe, sets=["lr=0.25", "train.context=48", "model.dropout=0.3"],
                          flags=dict(REQUIRED, context=64, arch="gcnn-small"))
    assert config.momentum == TrainConfig().momentum  # default
    assert config.batch_size == 4  # recipe
    assert config.lr == 0.25  # --set over recipe
    assert config.context == 64  # flag over --set
    assert config.model == {"arch": "gcnn-small", "dropout": 0.3}


@pytest.mark.parametrize("text,expected", [
    ("lr=0.5", ("train", "lr", 0.5)),
    ("train.max_updates=10", ("train", "max_updates", 10)),
    ("model.adaptive_cutoffs=[20, 40]", ("model", "adaptive_cutoffs", [20, 40])),
    ("model.weight_norm=false", ("model", "weight_norm", False)),
    ("model.arch=gcnn-8", ("model", "arch", "gcnn-8")),
    ('optimizer="adamw"', ("train", "optimizer", "adamw")),
])
def test_set_values_are_toml(text, expected):
    assert parse_set(text) == expected


@pytest.mark.parametrize("text", ["lr", "=1", "data.path=x", "train.=1"])
def test_malformed_set_is_rejected(text, capsys):
    with pytest.raises(ConfigError, match=f"sets item {text!r}"):
        parse_set(text)
    from gcnn.cli import main

    assert main(["train", "--set", text, "--out", "nowhere"]) == 2
    assert f"--set {text!r}" in capsys.readouterr().err


def test_unknown_key_in_a_recipe_names_file_and_key(tmp_path):
    recipe = write(tmp_path / "r.toml", "[train]\nlearning_rate = 1.0\n")
    with pytest.raises(ConfigError, match=r"r\.toml: unknown train key 'learning_rate'"):
        build_config(recipe=recipe, flags=REQUIRED)


def test_unknown_table_and_bad_toml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"r\.toml: unknown table or key\(s\) optim"):
        build_config(recipe=write(tmp_path / "r.toml", "[optim]\nlr = 1\n"), flags=REQUIRED)
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        build_config(recipe=write(tmp_path / "bad.toml", "[train\n"), flags=REQUIRED)
    with pytest.raises(ConfigError, match="no such config file"):
        build_config(recipe=tmp_path / "missing.toml", flags=REQUIRED)


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", "8.5", "train.batch_size must be an integer"),
    ("lr", "true", "train.lr must be a finite number"),
    ("tensorboard", "1", "train.tensorboard must be true or false"),
    ("optimizer", "adam", "train.optimizer must be one of nesterov, sgd, adamw"),
    ("momentum", "1.5", r"train.momentum must be in \[0, 1\)"),
    ("accum_steps", "3", "train.batch_size 32 must be a multiple of train.accum_steps 3"),
    ("adam_betas", "[0.9]", "train.adam_betas must be two numbers"),
])
def test_wrong_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(sets=[f"{key}={value}"], flags=REQUIRED)


def test_a_run_needs_a_bound_data_and_out():
    with pytest.raises(ConfigError, match="no bound on the run"):
        build_config(flags={"data": "d", "out": "o"})
    with pytest.raises(ConfigError, match="no data"):
        build_config(flags={"out": "o", "max_epochs": 1})
    # a cosine schedule bounded by time alone is valid: it decays over the minutes (see the schedule tests)
    assert build_config(sets=["schedule=cosine"], flags={"data": "d", "out": "o", "max_minutes": 5}).max_minutes == 5


def test_model_table_errors_name_the_model_key():
    with pytest.raises(ConfigError, match="model: .*dropoutt"):
        resolve_model_config({"arch": "gcnn-tiny", "dropoutt": 0.1}, 100)
    with pytest.raises(ConfigError, match="model: .*dropout must be a number"):
        resolve_model_config({"arch": "gcnn-tiny", "dropout": "high"}, 100)
    with pytest.raises(ConfigError, match="model.vocab_size cannot be set"):
        resolve_model_config({"arch": "gcnn-tiny", "vocab_size": 5}, 100)
    with pytest.raises(ConfigError, match="no architecture"):
        resolve_model_config({}, 100)


def test_custom_architecture_from_the_model_table(tmp_path):
    recipe = write(tmp_path / "custom.toml", """
[model]
embed_dim = 8
adaptive_cutoffs = [20]
blocks = [ { layers = [[3, 16]], residual = false }, { layers = [[1, 8], [3, 8], [1, 16]], repeat = 2 } ]
""")
    config = resolve_model_config(build_config(recipe=recipe, flags=REQUIRED).model, 50)
    assert isinstance(config, ModelConfig) and config.num_layers == 7 and config.vocab_size == 50
    assert gcnn.build_model(config).receptive_field == 1 + 2 + 2 * 2


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_recipe_in_configs_is_valid(recipe):
    config = build_config(recipe=recipe, flags={"data": "d", "out": "o"})
    model_config = resolve_model_config(config.model, 33278)
    assert model_config.vocab_size == 33278
    assert config.max_updates or config.max_epochs or config.max_minutes
    assert set(load_recipe(recipe)["train"]) <= set(TrainConfig().to_dict())


def test_expected_recipes_exist():
    names = {p.name for p in CONFIGS.glob("*.toml")}
    assert {"shakespeare-cpu.toml", "wikitext2-cpu.toml", "wikitext103-paper.toml", "gbw-paper.toml"} <= names
    paper = build_config(recipe=CONFIGS / "wikitext103-paper.toml", flags={"data": "d", "out": "o"})
    assert (paper.optimizer, paper.lr, paper.momentum, paper.clip_norm, paper.schedule, paper.plateau_factor,
            paper.weight_decay, paper.max_epochs, paper.model["dropout"]) == (
        "nesterov", 1.0, 0.99, 0.1, "plateau", 0.5, 5e-6, 35, 0.2)


def test_the_hour_recipe_is_what_its_docs_say():
    """configs/wikitext2-cpu-hour.toml as docs/training.md and the benchmark report describe it: 40-token receptive
    field, adaptive input tied to the adaptive softmax, 12,245,984 parameters on WikiText-2's vocabulary."""
    config = build_config(recipe=CONFIGS / "wikitext2-cpu-hour.toml", flags={"data": "d", "out": "o"})
    model_config = resolve_model_config(config.model, 33278)
    assert model_config.receptive_field == 40
    assert model_config.adaptive_input and model_config.tie_embeddings
    assert (config.optimizer, config.schedule, config.max_minutes, config.precision) == ("adamw", "cosine", 60, "bf16")
    assert gcnn.build_model(model_config).num_parameters() == 12_245_984


def test_config_round_trips_through_a_dict():
    config = build_config(sets=["model.arch=gcnn-tiny", "lr=0.3"], flags=REQUIRED)
    assert TrainConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------------------ optimisers
def tiny_model():
    torch.manual_seed(0)
    return gcnn.build_model("gcnn-tiny", vocab_size=100)


@pytest.mark.parametrize("name,cls", [("nesterov", torch.optim.SGD), ("sgd", torch.optim.SGD),
                                      ("adamw", torch.optim.AdamW)])
def test_weight_decay_skips_biases_and_gains(name, cls):
    model = tiny_model()
    config = build_config(sets=[f"optimizer={name}", "weight_decay=0.1"], flags=REQUIRED)
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, cls)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for pname, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), pname
    assert optimizer.param_groups[0].get("nesterov", False) == (name == "nesterov")


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    model = tiny_model()
    config = build_config(sets=["optimizer=adamw", "lr=1e-3", "schedule=cosine", "warmup_updates=10",
                                "min_lr=1e-5"], flags=dict(REQUIRED, max_updates=110))
    optimizer = build_optimizer(model, config)
    schedule = Schedule(optimizer, config, total_updates=110)
    lrs = []
    for _ in range(110):
        lrs.append(schedule.lr)
        optimizer.step()
        schedule.after_update()
    assert math.isclose(lrs[0], 1e-4) and math.isclose(lrs[9], 1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # decreasing after the warmup
    assert math.isclose(schedule.lr, 1e-5, rel_tol=1e-6)
    assert math.isclose(lrs[60], 1e-5 + (1e-3 - 1e-5) * 0.5, rel_tol=1e-6)  # halfway down the cosine


def test_cosine_schedule_over_a_time_budget_follows_the_seconds_given():
    """With only max_minutes bounding the run, the cosine decays over wall-clock seconds, not updates."""
    model = tiny_model()
    flags = dict(REQUIRED, max_updates=0, max_minutes=10)
    config = build_config(sets=["optimizer=adamw", "lr=1e-3", "schedule=cosine", "warmup_updates=2",
                                "min_lr=1e-5"], flags=flags)
    optimizer = build_optimizer(model, config)
    schedule = Schedule(optimizer, config, total_updates=0)
    assert schedule.by_time and schedule.budget_seconds == 600
    lrs = []
    for seconds in (1, 2, 300, 300, 599.9, 600, 900):  # the same update count, different clocks, give other lrs
        optimizer.step()
        schedule.after_update(seconds)
        lrs.append(schedule.lr)
    assert math.isclose(lrs[1], 1e-3 * (1 - (1 - math.cos(math.pi * 2 / 600)) / 2 * (1 - 1e-2)), rel_tol=1e-6)
    assert math.isclose(lrs[2], 1e-5 + (1e-3 - 1e-5) * 0.5, rel_tol=1e-6) and lrs[2] == lrs[3]
    assert lrs[4] > 1e-5 and math.isclose(lrs[5], 1e-5, rel_tol=1e-6) and math.isclose(lrs[6], 1e-5, rel_tol=1e-6)
    # an update bound, when given, is what the cosine follows
    counted = build_config(sets=["optimizer=adamw", "schedule=cosine"], flags=dict(REQUIRED, max_minutes=10))
    assert not Schedule(build_optimizer(model, counted), counted, total_updates=10).by_time


def test_plateau_schedule_halves_the_lr_and_restores_from_json():
    import json

    config = build_config(flags=REQUIRED)
    optimizer = build_optimizer(tiny_model(), config)
    schedule = Schedule(optimizer, config, total_updates=0)
    for loss in (5.0, 4.0, 4.5):
        schedule.after_validation(loss)
    assert schedule.lr == 0.5
    state = json.loads(json.dumps(schedule.state_dict()))
    resumed_optimizer = build_optimizer(tiny_model(), config)
    restored = Schedule(resumed_optimizer, config, total_updates=0)
    resumed_optimizer.load_state_dict(optimizer.state_dict())  # the trainer's order: optimizer, then schedule
    restored.load_state_dict(state)
    restored.after_validation(4.2)  # still no better than 4.0: halves again
    assert restored.lr == 0.25
