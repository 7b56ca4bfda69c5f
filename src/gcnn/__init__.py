"""gcnn: language modeling with Gated Convolutional Networks (Dauphin et al., 2017).

>>> import gcnn
>>> model = gcnn.build_model("gcnn-tiny", vocab_size=100)
"""

__version__ = "0.1.0"

from gcnn.architectures import config_from_file, get_config, list_architectures
from gcnn.config import Block, ModelConfig
from gcnn.errors import GcnnError
from gcnn.io import load_model, save_model
from gcnn.lm import IGNORE_INDEX, LanguageModel, LMOutput
from gcnn.model import GatedConvLM, build_model

__all__ = [
    "Block",
    "GatedConvLM",
    "GcnnError",
    "IGNORE_INDEX",
    "LMOutput",
    "LanguageModel",
    "ModelConfig",
    "build_model",
    "config_from_file",
    "get_config",
    "list_architectures",
    "load_model",
    "save_model",
]
