"""The model's hyperparameters: one frozen, hashable dataclass (a static jit argument)."""

from __future__ import annotations

import dataclasses
from typing import Any


DECODER_FAMILIES = ("llama", "qwen2", "gemma")
FAMILIES = ("bert",) + DECODER_FAMILIES
LORA_TARGETS = ("query", "key", "value", "out", "mlp_in", "mlp_out")  # the same for every family


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder + pooling + projection head.

  Field names follow the meaning, not a checkpoint format; `models/hf_import.py` maps
  Hugging Face `config.json` files onto it.
  """

  family: str = "bert"  # "bert" (BERT/MiniLM) or a decoder LLM: "llama", "qwen2", "gemma"
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"  # "gelu" = exact erf GELU (BERT); "gelu_tanh"; "relu"; "silu"
  # Decoder-LLM families only (RMSNorm, rotary positions, grouped-query attention, gated MLP):
  num_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = num_heads
  attention_head_dim: int = 0  # per-head width; 0 = hidden_size // num_heads
  attention_bias: bool = False  # biases on q/k/v (Qwen2)
  rope_theta: float = 10_000.0
  causal: bool = False  # keep the LLM's causal mask (parity checks); embeddings use False
  dropout_rate: float = 0.0  # hidden and attention-probability dropout while training
  projection_dim: int = 0  # 0: no projection head; else Dense(hidden_size -> projection_dim)
  projection_bias: bool = True
  # Init of a new projection head: "orthogonal" (random, but keeps the encoder's cosine geometry
  # at full width) or "lecun_normal" (a Gaussian; a square one distorts it: singular values 0-2).
  projection_init: str = "orthogonal"
  compute_dtype: str = "float32"  # "bfloat16" for TPU/GPU; parameters always stay float32
  remat: bool = False  # rematerialise each layer in the backward pass (saves activation memory)
  scan_layers: bool = False  # one nn.scan over stacked layer parameters (compiles one layer)
  remat_policy: str = "nothing_saveable"  # what remat keeps: nothing_saveable | dots_saveable |
  #                                         dots_with_no_batch_dims_saveable (jax.checkpoint_policies)
  # Low-rank adapters on the encoder's projections (gembed/models/lora.py); 0 = none:
  lora_rank: int = 0
  lora_alpha: float = 16.0  # the adapter's output scale is lora_alpha / lora_rank
  lora_targets: tuple[str, ...] = ("query", "key", "value", "out", "mlp_in", "mlp_out")

  @property
  def head_dim(self) -> int:
    return self.attention_head_dim or self.hidden_size // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def is_decoder(self) -> bool:
    return self.family in DECODER_FAMILIES

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
    if values.get("family", "bert") not in FAMILIES:
      raise ValueError(f"unsupported encoder family {values['family']!r}; supported: {FAMILIES}")
    values = dict(values)
    if "lora_targets" in values:  # a JSON list; the config must stay hashable
      values["lora_targets"] = tuple(values["lora_targets"])
    return cls(**values)

  def __post_init__(self):
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      raise ValueError(f"unknown lora_targets {unknown}; known: {LORA_TARGETS}")

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)
