"""The embedding model: encoder -> masked mean pooling -> optional linear projection.

At this module's edge the parameters are a plain nested dict of arrays (no Flax boxes):
checkpoints, soups and export all work on that tree. `logical_axes()` gives the matching tree
of logical axis names for sharding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gembed import sharding
from gembed.models.bert import BertEncoder
from gembed.models.decoder import DecoderEncoder
from gembed.models.config import ModelConfig


_PROJECTION_INITS = {"orthogonal": nn.initializers.orthogonal,
                     "lecun_normal": nn.initializers.lecun_normal}


def mean_pool(hidden, attention_mask):
  """Mean over non-padding positions (prompt tokens included), as sentence-transformers."""
  mask = attention_mask.astype(jnp.float32)[..., None]
  summed = jnp.sum(hidden * mask, axis=-2)
  return summed / jnp.maximum(jnp.sum(mask, axis=-2), 1e-9)


class EmbeddingModel(nn.Module):
  """(input_ids, attention_mask) -> unnormalised float32 embeddings (batch, embedding_dim)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    cfg = self.config
    encoder_cls = DecoderEncoder if cfg.is_decoder else BertEncoder
    hidden = encoder_cls(cfg, name="encoder")(input_ids, attention_mask, deterministic)
    pooled = mean_pool(hidden, attention_mask)
    if cfg.projection_dim:
      pooled = nn.Dense(
          cfg.projection_dim,
          use_bias=cfg.projection_bias,
          kernel_init=nn.with_logical_partitioning(
              _PROJECTION_INITS[cfg.projection_init](), ("embed", "proj")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("proj",)),
          name="projection",
      )(pooled)
    return sharding.constrain(pooled.astype(jnp.float32), ("batch", "proj"))


def _dummy_inputs():
  return jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32)


def layer_layout(params: dict, config: ModelConfig) -> dict:
  """`params` with the encoder's layers as `config` runs them: `layer_0` ... `layer_{n-1}`, or
  stacked under `layers` (config.scan_layers). Host arrays; a no-op when already in layout."""
  encoder = dict(params["encoder"])
  if config.scan_layers and "layer_0" in encoder:
    layers = [encoder.pop(f"layer_{i}") for i in range(config.num_layers)]
    encoder["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
  elif not config.scan_layers and "layers" in encoder:
    stacked = encoder.pop("layers")
    for i in range(config.num_layers):
      encoder[f"layer_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked)
  return {**params, "encoder": encoder}


def keep_layers(params: dict, config: ModelConfig, indices) -> dict:
  """`params` (of `config`) with only the encoder layers `indices`, renumbered from 0: a
  shallower student initialised from its teacher's own layers (embeddings and head kept)."""
  encoder = dict(layer_layout(params, config.replace(scan_layers=False))["encoder"])
  layers = [encoder.pop(f"layer_{i}") for i in range(config.num_layers)]
  encoder.update({f"layer_{new}": layers[old] for new, old in enumerate(indices)})
  return {**params, "encoder": encoder}


def init_params(config: ModelConfig, rng) -> dict:
  """Random parameters as a plain pytree (used for the projection head and for tests)."""
  variables = EmbeddingModel(config).init(rng, *_dummy_inputs())
  return nn.meta.unbox(variables)["params"]


def logical_axes(config: ModelConfig) -> dict:
  """Tree of `jax.sharding.PartitionSpec`s of logical axis names, same structure as params."""
  abstract = jax.eval_shape(
      lambda: EmbeddingModel(config).init(jax.random.PRNGKey(0), *_dummy_inputs()))
  return nn.get_partition_spec(abstract)["params"]


def apply_model(config: ModelConfig, params, input_ids, attention_mask, dropout_rng=None):
  """Pure forward pass; dropout is active only when a `dropout_rng` is given."""
  deterministic = dropout_rng is None or config.dropout_rate == 0.0
  rngs = None if deterministic else {"dropout": dropout_rng}
  return EmbeddingModel(config).apply(
      {"params": params}, input_ids, attention_mask, deterministic, rngs=rngs)
