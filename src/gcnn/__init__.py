"""gcnn: language modeling with Gated Convolutional Networks (Dauphin et al., 2017)."""

__version__ = "0.1.0"
