"""The pure train step: no I/O, no mesh creation (gembed.state jits it with shardings).

A batch is a dict of arrays over the global batch, with the fields of gembed.batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from gembed import chunks, losses
from gembed.models import lora
from gembed.models.config import ModelConfig
from gembed.models.embedder import apply_model


@dataclasses.dataclass(frozen=True)
class LossConfig:
  temperature: float = 0.05
  dims: tuple[int, ...] = ()  # MRL prefix dims; () = the full width only
  weights: tuple[float, ...] = ()  # one per dim; () = all 1
  decoupled: bool = False
  ring: bool = False  # ring NCE over the batch axes of the mesh set with `jax.set_mesh`
  row_chunk: int = 0  # > 0: logits computed this many query rows at a time (O(chunk x B) memory)
  prefix_distill: float = 0.0  # weight of losses.prefix_distillation_loss (0: off)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def _text_streams(batch, rng):
  """(ids, mask, dropout rng) per text stream: queries, positives, flattened hard negatives."""
  rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
  streams = [(batch["query_ids"], batch["query_mask"], rngs[0]),
             (batch["positive_ids"], batch["positive_mask"], rngs[1])]
  if "negative_ids" in batch:
    length = batch["negative_ids"].shape[-1]
    streams.append((batch["negative_ids"].reshape(-1, length),
                    batch["negative_mask"].reshape(-1, length), rngs[2]))
  return streams


def embed_batch(model_config: ModelConfig, params, batch, rng=None):
  """(query, positive, negatives or None) embeddings of a batch, float32, unnormalised."""
  out = [apply_model(model_config, params, ids, mask, r) for ids, mask, r in _text_streams(batch, rng)]
  negatives = out[2].reshape(*batch["negative_ids"].shape[:2], -1) if len(out) == 3 else None
  return out[0], out[1], negatives


def contrastive_loss(loss_config: LossConfig, query, positive, negatives, batch):
  """MRL-summed masked NCE on embeddings; returns (loss, metrics)."""
  dims = loss_config.dims or (query.shape[-1],)
  kwargs = dict(dims=dims, weights=loss_config.weights or None, query_keys=batch["query_key"],
                positive_keys=batch["positive_key"], temperature=loss_config.temperature,
                decoupled=loss_config.decoupled)
  if loss_config.ring:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      raise ValueError("loss.ring needs the device mesh: trace the step under jax.set_mesh(mesh)")
    total, per_dim, accuracy = losses.ring_matryoshka_loss(
        mesh, query, positive, negatives, batch.get("negative_valid"), **kwargs)
  else:
    total, per_dim, accuracy = losses.matryoshka_loss(
        query, positive, negatives, batch.get("negative_valid"), row_chunk=loss_config.row_chunk,
        **kwargs)
  metrics = {"accuracy": accuracy[max(dims)]}
  metrics.update({f"loss@{d}": v for d, v in per_dim.items()})
  if loss_config.prefix_distill:
    if loss_config.ring:
      raise ValueError("loss.prefix_distill needs the in-batch logits: it does not run with loss.ring")
    distill = losses.prefix_distillation_loss(query, positive, dims=dims,
                                              temperature=loss_config.temperature,
                                              row_chunk=loss_config.row_chunk)
    metrics["prefix_distill"] = distill
    total = total + loss_config.prefix_distill * distill
  metrics["loss"] = total
  return total, metrics


def frozen_base(params, model_config: ModelConfig):
  """With adapters (lora_rank > 0) everything but `lora.trainable_mask`'s leaves is a constant of
  the step: no gradient is computed for the frozen weights, only through their activations."""
  if not model_config.lora_rank:
    return params
  return jax.tree.map(lambda p, trained: p if trained else jax.lax.stop_gradient(p), params,
                      lora.trainable_mask(params))


def loss_fn(params, batch, rng, model_config: ModelConfig, loss_config: LossConfig):
  params = frozen_base(params, model_config)
  query, positive, negatives = embed_batch(model_config, params, batch, rng)
  return contrastive_loss(loss_config, query, positive, negatives, batch)


def cached_loss_and_grads(params, batch, rng, model_config: ModelConfig, loss_config: LossConfig,
                          chunk_size: int):
  """GradCache (Gao et al., 2021): the loss and parameter gradients of `loss_fn` with activation
  memory of one chunk instead of the whole global batch.

  1. Embed every text in chunks of `chunk_size` rows, keeping no activations.
  2. Loss over the whole global batch (every in-batch and hard negative, the false-negative mask,
     MRL) and its gradient with respect to the embeddings, its logits also `chunk_size` query rows
     at a time (or the ring loss), so that no B x B matrix is held.
  3. Chunk by chunk, recompute the forward pass and pull that gradient back to the parameters.
  Each chunk's dropout rng is fixed by its index, so steps 1 and 3 see the same masks.
  """
  def forward(ids, mask, chunk_rng, index, p):
    r = None if chunk_rng is None else jax.random.fold_in(chunk_rng, index)
    return apply_model(model_config, frozen_base(p, model_config), ids, mask, r)

  embeddings = []
  for ids, mask, stream_rng in _text_streams(batch, rng):
    def embed(_, chunk, stream_rng=stream_rng):
      index, ids_c, mask_c = chunk
      return None, forward(ids_c, mask_c, stream_rng, index, params)
    pieces = (chunks.to_chunks(ids, chunk_size), chunks.to_chunks(mask, chunk_size))
    _, out = jax.lax.scan(embed, None, (jnp.arange(pieces[0].shape[0]), *pieces))
    embeddings.append(jax.lax.stop_gradient(chunks.from_chunks(out)))
  if len(embeddings) == 3:
    b, k = batch["negative_ids"].shape[:2]
    embeddings[2] = embeddings[2].reshape(b, k, -1)
  else:
    embeddings.append(None)

  if not loss_config.ring:  # the global B x B logits would otherwise dominate memory
    loss_config = dataclasses.replace(loss_config, row_chunk=chunk_size)

  def loss_on_embeddings(query, positive, negatives):
    return contrastive_loss(loss_config, query, positive, negatives, batch)

  argnums = (0, 1, 2) if embeddings[2] is not None else (0, 1)
  (loss, metrics), embedding_grads = jax.value_and_grad(
      loss_on_embeddings, argnums=argnums, has_aux=True)(*embeddings)

  grads = jax.tree.map(jnp.zeros_like, params)
  for (ids, mask, stream_rng), cotangent in zip(_text_streams(batch, rng), embedding_grads):
    def backprop(acc, chunk, stream_rng=stream_rng):
      index, ids_c, mask_c, g_c = chunk
      _, pull = jax.vjp(lambda p: forward(ids_c, mask_c, stream_rng, index, p), params)
      return jax.tree.map(jnp.add, acc, pull(g_c)[0]), None
    cotangent = cotangent.reshape(ids.shape[0], -1)
    pieces = [chunks.to_chunks(x, chunk_size) for x in (ids, mask, cotangent)]
    grads, _ = jax.lax.scan(backprop, grads, (jnp.arange(pieces[0].shape[0]), *pieces))
  return (loss, metrics), grads


def train_step(state: TrainState, batch, *, model_config: ModelConfig, loss_config: LossConfig,
               optimizer: optax.GradientTransformation, schedule: Callable,
               grad_cache_chunk: int = 0):
  """One optimizer step; returns (new state, metrics). Pure: jit it with shardings.

  `grad_cache_chunk` > 0 computes the same loss and gradients with GradCache, in chunks of that
  many rows (memory flat in the global batch size).
  """
  rng, dropout_rng = jax.random.split(state.rng)
  dropout_rng = dropout_rng if model_config.dropout_rate > 0 else None
  if grad_cache_chunk:
    (_, metrics), grads = cached_loss_and_grads(state.params, batch, dropout_rng, model_config,
                                                loss_config, grad_cache_chunk)
  else:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, dropout_rng, model_config, loss_config)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, metrics

