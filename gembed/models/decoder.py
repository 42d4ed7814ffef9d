"""Decoder-LLM families (Llama, Qwen2, Gemma) as bidirectional encoders, in Flax Linen.

The report initialises its embedder from an LLM and removes the causal mask: every token attends
to every non-padding token. `config.causal = True` keeps the LLM's mask (for parity checks
against the original implementation). Pre-RMSNorm blocks, rotary positions (the rotate-half
convention of Hugging Face checkpoints), grouped-query attention, gated MLP. The LM head is not
part of an embedder, so tied or untied output embeddings make no difference here.

Family differences: Qwen2 has q/k/v biases; Gemma scales embeddings by sqrt(hidden_size),
stores RMSNorm weights as an offset from 1, and uses a tanh-GELU gate.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gembed import sharding
from gembed.models import lora
from gembed.models.bert import _ones, _zeros, activation, attend, embed, run_layers
from gembed.models.config import ModelConfig


class RMSNorm(nn.Module):
  eps: float
  offset: bool  # Gemma: scale = 1 + weight (weights initialised at 0)

  @nn.compact
  def __call__(self, x):
    weight = self.param("scale", (_zeros if self.offset else _ones)(("embed",)), (x.shape[-1],),
                        jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return normed * (1.0 + weight if self.offset else weight)


def rotary(x, positions, theta: float):
  """Rotary position embedding of (batch, length, heads, head_dim), rotate-half layout."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1]))
  angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # (batch, length, half)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class DecoderAttention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, attention_bias):
    cfg = self.config
    dtype = jnp.dtype(cfg.compute_dtype)

    def projection(name, heads, axis):
      return lora.dense(cfg, name, ("embed", axis, "kv"), features=(heads, cfg.head_dim), dtype=dtype,
                        use_bias=cfg.attention_bias, bias_init=_zeros((axis, "kv")), name=name)(x)

    query = rotary(projection("query", cfg.num_heads, "heads"), positions, cfg.rope_theta)
    key = rotary(projection("key", cfg.kv_heads, "kv_heads"), positions, cfg.rope_theta)
    value = projection("value", cfg.kv_heads, "kv_heads")
    # Grouped-query attention: query heads [g * n, (g + 1) * n) share key/value head g.
    groups = cfg.num_heads // cfg.kv_heads
    key, value = (jnp.repeat(t, groups, axis=2) for t in (key, value))
    context = attend(query, key, value, attention_bias, dtype)
    return lora.dense(cfg, "out", ("heads", "kv", "embed"), features=cfg.hidden_size, axis=(-2, -1),
                      dtype=dtype, use_bias=False, name="out")(context)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attention(norm(x)), then h + mlp(norm(h)) with a gated MLP."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, attention_bias):
    cfg = self.config
    dtype = jnp.dtype(cfg.compute_dtype)
    offset = cfg.family == "gemma"
    normed = RMSNorm(cfg.layer_norm_eps, offset, name="attention_norm")(x).astype(dtype)
    x = x + DecoderAttention(cfg, name="attention")(normed, positions, attention_bias)
    normed = RMSNorm(cfg.layer_norm_eps, offset, name="mlp_norm")(x).astype(dtype)

    def dense(features, axes, target, name):
      return lora.dense(cfg, target, axes, features=features, dtype=dtype, use_bias=False, name=name)

    gate = activation(cfg.hidden_act)(
        dense(cfg.intermediate_size, ("embed", "mlp"), "mlp_in", "mlp_gate")(normed))
    up = dense(cfg.intermediate_size, ("embed", "mlp"), "mlp_in", "mlp_up")(normed)
    x = x + dense(cfg.hidden_size, ("mlp", "embed"), "mlp_out", "mlp_down")(gate * up)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    return (x, None) if cfg.scan_layers else x  # nn.scan wants (carry, output)


class DecoderEncoder(nn.Module):
  """Token ids -> hidden states after the final norm (batch, length, hidden_size), float32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    del deterministic  # LLM checkpoints train without dropout; none is applied here
    cfg = self.config
    dtype = jnp.dtype(cfg.compute_dtype)
    x = embed(cfg.vocab_size, cfg.hidden_size, "vocab", "token_embed")(input_ids).astype(dtype)
    if cfg.family == "gemma":
      x = x * jnp.asarray(cfg.hidden_size ** 0.5, dtype)  # rounded to the compute dtype, as Gemma
    # Right padding: real tokens sit at positions 0..n-1 whatever the padding.
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    visible = attention_mask[:, None, None, :] > 0
    if cfg.causal:
      visible = visible & jnp.tril(jnp.ones((input_ids.shape[1],) * 2, bool))[None, None]
    attention_bias = jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    x = run_layers(DecoderLayer, cfg, x, positions, attention_bias)
    return RMSNorm(cfg.layer_norm_eps, cfg.family == "gemma", name="final_norm")(x)
