"""The model's hyperparameters: one frozen, hashable dataclass (a static jit argument)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder + pooling + projection head.

  Field names follow the meaning, not a checkpoint format; `models/hf_import.py` maps
  Hugging Face `config.json` files onto it.
  """

  family: str = "bert"  # encoder family; only "bert" (BERT/MiniLM) so far
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"  # "gelu" = exact erf GELU (BERT); "gelu_tanh"; "relu"
  dropout_rate: float = 0.0  # hidden and attention-probability dropout while training
  projection_dim: int = 0  # 0: no projection head; else Dense(hidden_size -> projection_dim)
  projection_bias: bool = True
  compute_dtype: str = "float32"  # "bfloat16" for TPU/GPU; parameters always stay float32
  remat: bool = False  # rematerialise each layer in the backward pass (saves activation memory)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def embedding_dim(self) -> int:
    """Width of the model's output embedding."""
    return self.projection_dim or self.hidden_size

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config key(s): {', '.join(unknown)}; known: {sorted(known)}")
    if values.get("family", "bert") != "bert":
      raise ValueError(f"unsupported encoder family {values['family']!r}; supported: 'bert'")
    return cls(**values)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)
