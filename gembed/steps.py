"""The pure train step: no I/O, no mesh creation (the trainer jits it with shardings).

A batch is a dict of arrays over the global batch of B rows:
  query_ids, query_mask           (B, Lq) int32
  positive_ids, positive_mask     (B, Lp) int32
  negative_ids, negative_mask     (B, K, Ln) int32   (absent when K = 0)
  negative_valid                  (B, K) bool        (False for a missing hard negative)
  query_key, positive_key         (B,) int32 identity keys for the false-negative mask
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from gembed import losses
from gembed.models.config import ModelConfig
from gembed.models.embedder import apply_model


@dataclasses.dataclass(frozen=True)
class LossConfig:
  temperature: float = 0.05
  dims: tuple[int, ...] = ()  # MRL prefix dims; () = the full width only
  weights: tuple[float, ...] = ()  # one per dim; () = all 1
  decoupled: bool = False


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def embed_batch(model_config: ModelConfig, params, batch, rng=None):
  """(query, positive, negatives or None) embeddings of a batch, float32, unnormalised."""
  rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
  query = apply_model(model_config, params, batch["query_ids"], batch["query_mask"], rngs[0])
  positive = apply_model(model_config, params, batch["positive_ids"], batch["positive_mask"], rngs[1])
  negatives = None
  if "negative_ids" in batch:
    b, k, length = batch["negative_ids"].shape
    negatives = apply_model(model_config, params, batch["negative_ids"].reshape(b * k, length),
                            batch["negative_mask"].reshape(b * k, length), rngs[2]).reshape(b, k, -1)
  return query, positive, negatives


def contrastive_loss(loss_config: LossConfig, query, positive, negatives, batch):
  """MRL-summed masked NCE on embeddings; returns (loss, metrics)."""
  dims = loss_config.dims or (query.shape[-1],)
  total, per_dim, accuracy = losses.matryoshka_loss(
      query, positive, negatives, batch.get("negative_valid"),
      dims=dims, weights=loss_config.weights or None,
      query_keys=batch["query_key"], positive_keys=batch["positive_key"],
      temperature=loss_config.temperature, decoupled=loss_config.decoupled)
  metrics = {"loss": total, "accuracy": accuracy[max(dims)]}
  metrics.update({f"loss@{d}": v for d, v in per_dim.items()})
  return total, metrics


def loss_fn(params, batch, rng, model_config: ModelConfig, loss_config: LossConfig):
  query, positive, negatives = embed_batch(model_config, params, batch, rng)
  return contrastive_loss(loss_config, query, positive, negatives, batch)


def train_step(state: TrainState, batch, *, model_config: ModelConfig, loss_config: LossConfig,
               optimizer: optax.GradientTransformation, schedule: Callable):
  """One optimizer step; returns (new state, metrics). Pure: jit it with shardings."""
  rng, dropout_rng = jax.random.split(state.rng)
  use_dropout = model_config.dropout_rate > 0
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, batch, dropout_rng if use_dropout else None,
                                model_config, loss_config)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, metrics

