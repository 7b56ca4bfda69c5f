"""gcnn: language modeling with Gated Convolutional Networks (Dauphin et al., 2017).

The package's front door; each name lives in its own layer (docs/architecture.md)::

    import gcnn
    model = gcnn.build_model("gcnn-8", vocab_size=33278)          # any architecture `gcnn archs` lists
    model = gcnn.load("runs/wt2")                                  # a run, exported or checkpoint folder; model.vocab
    gcnn.evaluate_split(model, "data/wt2", "test").perplexity
    gcnn.score_texts(model, model.vocab, ["To be , or not to be"])
    gcnn.generate_text(model, model.vocab, ["The meaning of"], max_tokens=20, top_k=40, seed=1)
    gcnn.save_pretrained(model, "models/wt2")                     # vocabulary optional
    scorer = gcnn.Scorer(model); scorer.advance([scorer.start()], [7])  # beam-search states (docs/asr.md)
"""

from gcnn.architectures import build_model, config_from_file, get_config, list_architectures
from gcnn.config import Block, ConfigBase, LSTMConfig, ModelConfig, TransformerConfig
from gcnn.data.vocab import Vocabulary
from gcnn.decoding import generate_text
from gcnn.errors import CheckpointError, ConfigError, DataError, GcnnError
from gcnn.evaluate import evaluate_split, score_texts
from gcnn.io import load, save_pretrained
from gcnn.lm import IGNORE_INDEX, LanguageModel, LMOutput
from gcnn.model import GatedConvLM
from gcnn.scorer import Scorer
from gcnn.version import __version__

__all__ = [
    "Block",
    "CheckpointError",
    "ConfigBase",
    "ConfigError",
    "DataError",
    "GatedConvLM",
    "GcnnError",
    "IGNORE_INDEX",
    "LMOutput",
    "LSTMConfig",
    "LanguageModel",
    "ModelConfig",
    "TransformerConfig",
    "Vocabulary",
    "__version__",
    "build_model",
    "config_from_file",
    "evaluate_split",
    "generate_text",
    "get_config",
    "list_architectures",
    "load",
    "Scorer",
    "save_pretrained",
    "score_texts",
]
