"""gcnn models as Hugging Face transformers models (``pip install 'gcnn[hf]'``).

A folder written by ``gcnn export`` / :func:`gcnn.save_pretrained` is also a transformers model folder
(:mod:`gcnn.hf_files`)::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)   # offline: a local folder
    tokenizer = AutoTokenizer.from_pretrained(folder)

or, without remote code, after :func:`register` (AutoConfig / AutoModelForCausalLM learn ``model_type "gcnn"``).

:class:`GCNNForCausalLM` wraps any gcnn :class:`~gcnn.lm.LanguageModel` (GCNN, LSTM, Transformer):

* ``logits`` are gcnn's log-probabilities (fp32), so a softmax of them is gcnn's distribution exactly; ``labels``
  give gcnn's loss (labels are shifted inside, as in every transformers causal LM; -100 is ignored);
* ``generate()`` carries the model's own incremental state (:class:`GCNNCache`: a GCNN's last k-1 inputs of each
  convolution, an LSTM's (h, c), a Transformer's keys and values) from step to step the way transformers' Mamba
  does: the model is stateful (``_is_stateful``), the cache travels in the outputs' ``cache`` and
  :meth:`GCNNForCausalLM.prepare_inputs_for_generation` feeds only the tokens the cache has not seen, so a new token
  costs O(layers x k) for a GCNN, as in ``gcnn generate``;
* ``config.max_position_embeddings`` is the model's useful context (a GCNN's receptive field, a Transformer's
  trained positions; 512 for an LSTM): what lm-evaluation-harness takes as its window.

Padding: gcnn's models take no attention mask. Right padding never changes a prediction of a causal model and is
accepted; a mask with padding before real tokens (left padding) is refused, since the model would read the pads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel
    from transformers import PretrainedConfig
    from transformers.utils import ModelOutput
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"gcnn.hf needs transformers: pip install 'gcnn[hf]' ({exc})") from None

from gcnn.architectures import build_model, config_from_dict
from gcnn.errors import CheckpointError
from gcnn.hf_files import HF_MODEL_TYPE, useful_context
from gcnn.lm import IGNORE_INDEX, LanguageModel


class GCNNConfig(PretrainedConfig):
    """transformers' config of a gcnn model: gcnn's own config dict (``gcnn_config``, any architecture) and the keys
    tools read (``vocab_size``, ``max_position_embeddings``, the special token ids)."""

    model_type = HF_MODEL_TYPE
    gcnn_config: dict | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = True
    gcnn_version: str | None = None

    def to_gcnn(self):
        """gcnn's config (:mod:`gcnn.config`) of this model."""
        if self.gcnn_config is None:
            raise CheckpointError("this GCNNConfig has no gcnn_config: it describes no model")
        return config_from_dict(self.gcnn_config, source="GCNNConfig.gcnn_config")


@dataclass
class GCNNCausalLMOutput(ModelOutput):
    """``logits``: (batch, time, vocab) gcnn log-probabilities of the next token; ``cache``: the state to continue
    from (with ``use_cache``)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: Any = None
    hidden_states: tuple[Tensor, ...] | None = None


class GCNNCache:
    """The incremental-decoding state of a gcnn model for transformers' ``generate``: the model's own cache
    (``gcnn.model.ConvCache``, ``LSTMState``, ``KVCache``) and how many tokens it has seen."""

    is_compileable = False

    def __init__(self, model: LanguageModel, batch_size: int):
        self.state = model.new_cache(batch_size)
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Keep the rows of ``beam_idx`` (beam search)."""
        self.state.reorder(beam_idx.to(torch.long))

    def __len__(self) -> int:
        return self.seen


class GCNNForCausalLM(PreTrainedModel, GenerationMixin):
    """A gcnn language model as a transformers causal LM (module docstring). ``self.model`` is the gcnn model."""

    config_class = GCNNConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    _supports_cache_class = False
    _no_split_modules: list[str] = []

    def __init__(self, config: GCNNConfig, model: LanguageModel | None = None):
        super().__init__(config)
        self.model = model if model is not None else build_model(config.to_gcnn())
        self.post_init()

    # ---- transformers' hooks
    def _init_weights(self, module) -> None:  # the weights are gcnn's own (loaded, or gcnn's initialization)
        pass

    def init_weights(self) -> None:
        pass

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # the cache is GCNNCache, made in prepare_inputs_for_generation
        return False

    def get_input_embeddings(self):
        return getattr(self.model, "embed", None)

    def get_output_embeddings(self):
        return None

    # ---- loading and saving: gcnn's loader and saver, with every check they make
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> "GCNNForCausalLM":
        """Load a gcnn model folder (exported, run or checkpoint folder) with :func:`gcnn.io.load` (checksums,
        shapes, vocabulary). A name that is not a local folder is fetched with huggingface_hub (its cache only
        where HF_HUB_OFFLINE=1). ``dtype``/``torch_dtype`` (``"auto"``, ``"float32"``, ``"bfloat16"``, ...) and
        ``device_map`` (a device, or ``"auto"``) are honoured; hub options (revision, cache_dir, ...) are passed to
        the download; quantization is refused."""
        from gcnn.io import load

        if kwargs.get("quantization_config") is not None:
            raise ValueError("gcnn models cannot be quantized by transformers: use gcnn.runtime.optimize(model, 'int8')")
        folder = _local_folder(pretrained_model_name_or_path, kwargs)
        config = kwargs.pop("config", None)
        lm = load(folder)
        if not isinstance(config, GCNNConfig):
            config = config_for(lm, folder)
        model = cls(config, lm)
        if lm.vocab is not None:
            model.generation_config = GenerationConfig(**_generation_ids(lm))
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if dtype not in (None, "auto"):
            model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        device = _device(kwargs.get("device_map"))
        if device is not None:
            model.to(device)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Write the model as a gcnn exported folder (which is a transformers folder too): :func:`gcnn.save_pretrained`."""
        from gcnn.io import save_pretrained

        save_pretrained(self.model, save_directory)

    # ---- the model
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        cache: GCNNCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> GCNNCausalLMOutput | tuple:
        """``input_ids`` (batch, time) -> ``logits`` (batch, time, vocab): gcnn's log-probabilities of the next token.
        With ``labels`` (usually ``input_ids``), ``loss`` is gcnn's mean negative log-likelihood of labels[:, 1:]
        given the inputs before them. With ``cache`` the inputs continue the sequence the cache has seen."""
        if inputs_embeds is not None:
            raise ValueError("gcnn models take input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("input_ids is required")
        check_padding(attention_mask, input_ids)
        if use_cache is None:
            use_cache = cache is not None
        if use_cache and cache is None:
            cache = GCNNCache(self.model, input_ids.shape[0])
        state = cache.state if cache is not None else None
        hidden = self.model.hidden_states(input_ids, state)
        if cache is not None:
            cache.seen += input_ids.shape[1]
        loss = None
        if labels is not None:
            targets = torch.full_like(labels, IGNORE_INDEX)
            targets[:, :-1] = labels[:, 1:]
            flat = targets.reshape(-1)
            keep = torch.nonzero(flat != IGNORE_INDEX, as_tuple=True)[0]
            log_probs = self.model.softmax.target_log_probs(hidden.reshape(-1, hidden.shape[-1])[keep], flat[keep])
            loss = -log_probs.float().sum() / max(keep.numel(), 1)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.model.softmax.log_probs(hidden).float()
        out = GCNNCausalLMOutput(
            loss=loss, logits=logits, cache=cache if use_cache else None,
            hidden_states=(hidden,) if output_hidden_states else None,
        )
        if return_dict is False:
            return out.to_tuple()
        return out

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: GCNNCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The whole prompt on the first step; afterwards only the tokens the cache has not seen (one per step)."""
        if inputs_embeds is not None:
            raise ValueError("gcnn models take input_ids, not inputs_embeds")
        use_cache = True if use_cache is None else use_cache
        if not use_cache:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if cache is None:
            cache = GCNNCache(self.model, input_ids.shape[0])
            return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": True}
        return {"input_ids": input_ids[:, cache.seen :], "cache": cache, "use_cache": True}


def check_padding(attention_mask: Tensor | None, input_ids: Tensor) -> None:
    """Refuse masks with padding before real tokens (the model would read the pads); right padding is fine."""
    if attention_mask is None or attention_mask.ndim != 2:
        return
    mask = attention_mask.to(torch.bool)
    # a real token after a pad in the same row: the pads would be read as context
    later_real = mask.flip(-1).cumsum(-1).flip(-1) > 0
    if bool((~mask & later_real).any()):
        raise ValueError(
            "gcnn models take no attention mask, and this one has padding before real tokens (left padding): the "
            "model would read the pads as text. Pad on the right (tokenizer.padding_side = 'right') or generate one "
            "sequence at a time"
        )


def config_for(lm: LanguageModel, folder: str | os.PathLike | None = None) -> GCNNConfig:
    """The :class:`GCNNConfig` of a loaded gcnn model (its config.json's HF keys when ``folder`` has them)."""
    context = useful_context(lm.config, lm.receptive_field, lm.trained_positions)
    vocab = lm.vocab
    special: dict[str, Any] = {}
    if vocab is not None:
        start = vocab.bos_id if vocab.bos_id is not None else vocab.eos_id
        special = dict(bos_token_id=start, unk_token_id=vocab.unk_id)
        if vocab.bos_id is not None:  # sentence vocabularies end a text at </s>; in stream ones <eos> ends a line only
            special["eos_token_id"] = vocab.eos_id
    config = GCNNConfig(
        gcnn_config=lm.config.to_dict(), vocab_size=lm.config.vocab_size, max_position_embeddings=context,
        architectures=["GCNNForCausalLM"], **special,
    )
    return config


def from_gcnn(model: LanguageModel) -> GCNNForCausalLM:
    """Wrap a gcnn model (e.g. from :func:`gcnn.load`) as a transformers model, sharing its weights."""
    wrapped = GCNNForCausalLM(config_for(model), model)
    if model.vocab is not None:
        wrapped.generation_config = GenerationConfig(**_generation_ids(model))
    return wrapped.eval()


def _generation_ids(model: LanguageModel) -> dict[str, int]:
    vocab = model.vocab
    # no pad id: generate() would take every start marker (<eos> in stream vocabularies) for padding
    ids: dict[str, Any] = {"bos_token_id": vocab.bos_id if vocab.bos_id is not None else vocab.eos_id}
    if vocab.bos_id is not None:
        ids["eos_token_id"] = vocab.eos_id
        ids["suppress_tokens"] = [vocab.bos_id]  # <s> is an input only: gcnn generate never generates it
    return ids


def _local_folder(name: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    path = Path(name)
    subfolder = kwargs.get("subfolder") or ""
    if path.is_dir():
        return path / subfolder
    from huggingface_hub import snapshot_download

    hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "force_download") if k in kwargs}
    return Path(snapshot_download(str(name), **hub)) / subfolder


def _device(device_map: Any) -> torch.device | None:
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError("gcnn models are not split across devices: give one device")
        device_map = devices.pop()
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


_registered = False


def register() -> None:
    """Teach transformers' AutoConfig and AutoModelForCausalLM ``model_type "gcnn"`` in this process, so that
    exported folders load without ``trust_remote_code``."""
    global _registered
    if _registered:
        return
    AutoConfig.register(HF_MODEL_TYPE, GCNNConfig, exist_ok=True)
    AutoModelForCausalLM.register(GCNNConfig, GCNNForCausalLM, exist_ok=True)
    _registered = True


__all__ = ["GCNNCache", "GCNNCausalLMOutput", "GCNNConfig", "GCNNForCausalLM", "check_padding", "from_gcnn", "register"]
