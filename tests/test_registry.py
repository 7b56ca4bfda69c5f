"""The one registry: every architecture name answers every question the same way (configs, models, `gcnn archs`,
recipes, TOML files, config.json), and every model config is a ConfigBase."""

import json

import pytest
import torch

import gcnn
from gcnn.architectures import MODEL_TYPES, config_from_dict, config_from_file, model_class
from gcnn.cli import main
from gcnn.config import ConfigBase
from gcnn.errors import ConfigError
from gcnn.train.config import resolve_model_config

V = 1000


@pytest.mark.parametrize("name", gcnn.list_architectures())
def test_every_name_gives_a_config_a_model_and_a_round_trip(name):
    config = gcnn.get_config(name, vocab_size=V)
    assert isinstance(config, ConfigBase) and config.arch == name and config.vocab_size == V
    with torch.device("meta"):
        model = gcnn.build_model(name, vocab_size=V)
    assert isinstance(model, gcnn.LanguageModel) and type(model) is model_class(config)
    assert model.config == config
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert resolve_model_config({"arch": name}, V) == config  # recipes read names the same way


def test_the_cli_lists_exactly_the_registry(capsys):
    assert main(["archs", "--vocab-size", str(V), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == gcnn.list_architectures()
    assert {r["model_type"] for r in rows} == set(MODEL_TYPES)


def test_every_model_type_uses_the_one_config_base():
    for model_type, (config_class, model_cls) in MODEL_TYPES.items():
        assert issubclass(config_class, ConfigBase) and config_class.model_type == model_type
        assert issubclass(model_cls, gcnn.LanguageModel)


def test_baselines_by_name_in_every_entry_point(tmp_path):
    lstm = gcnn.get_config("lstm-medium", vocab_size=V, dropout=0.3)
    assert lstm.model_type == "lstm" and lstm.hidden_dim == 650 and lstm.dropout == 0.3
    path = tmp_path / "arch.toml"
    path.write_text('[model]\narch = "transformer-tiny"\nnum_layers = 3\n')
    from_file = config_from_file(path, vocab_size=V)
    assert from_file == gcnn.get_config("transformer-tiny", vocab_size=V, num_layers=3)
    assert from_file == resolve_model_config({"arch": "transformer-tiny", "num_layers": 3}, V)
    custom = tmp_path / "custom.toml"
    custom.write_text('[model]\nmodel_type = "lstm"\nhidden_dim = 64\nembed_dim = 32\n')
    assert config_from_file(custom, vocab_size=V) == gcnn.LSTMConfig(vocab_size=V, hidden_dim=64, embed_dim=32)


def test_unknown_names_and_fields_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown architecture 'gcnn-99'; known: gcnn-8, gcnn-14"):
        gcnn.get_config("gcnn-99", vocab_size=V)
    with pytest.raises(ConfigError, match="vocab_size is needed"):
        gcnn.get_config("gcnn-8")
    with pytest.raises(ConfigError, match="unknown model option.*hidden_dim.*for gcnn-8"):
        gcnn.get_config("gcnn-8", vocab_size=V, hidden_dim=3)
    with pytest.raises(ConfigError, match="unknown model_type 'rnn'; known: gcnn, lstm, transformer"):
        config_from_dict({"model_type": "rnn", "vocab_size": V})
    with pytest.raises(ConfigError, match="give arch or model_type, not both"):
        resolve_model_config({"arch": "lstm-tiny", "model_type": "lstm"}, V)
