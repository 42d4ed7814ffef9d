"""The pure train step: no I/O, no mesh creation (gembed.state jits it with shardings).

A batch is a dict of arrays over the global batch, with the fields of gembed.batch, or a tuple
of such dicts, one per row group (data.length_groups): the encoder runs per group, the loss
over all rows.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from gembed import batch as batch_schema
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
  contrastive_weight: float = 1.0  # weight of the MRL NCE loss (0: distillation terms alone)
  distill_embedding: float = 0.0  # weight of losses.embedding_distillation_loss (needs a teacher)
  distill_embedding_kind: str = "cosine"  # cosine | mse
  distill_similarity: float = 0.0  # weight of losses.similarity_distillation_loss (needs a teacher)

  @property
  def distills(self) -> bool:
    return bool(self.distill_embedding or self.distill_similarity)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def _text_streams(batch, rng):
  """Per text stream (queries, positives, flattened hard negatives), its parts: (ids, mask,
  dropout rng) of each row group, groups in order (one part for an ungrouped batch)."""
  groups = batch_schema.row_groups(batch)
  rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
  streams = []
  for name, stream_rng in zip(("query", "positive", "negative"), rngs):
    if f"{name}_ids" not in groups[0]:
      continue
    parts = []
    for index, group in enumerate(groups):
      length = group[f"{name}_ids"].shape[-1]
      part_rng = stream_rng if stream_rng is None or index == 0 else jax.random.fold_in(stream_rng, index)
      parts.append((group[f"{name}_ids"].reshape(-1, length),
                    group[f"{name}_mask"].reshape(-1, length), part_rng))
    streams.append(parts)
  return streams


def _join_rows(parts):
  """Row groups' embeddings of one stream as one array, groups in order."""
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _as_triple(embeddings):
  """(query, positive, negatives (B, K, D) or None) from the streams' (rows, D) embeddings."""
  if len(embeddings) == 2:
    return embeddings[0], embeddings[1], None
  rows, width = embeddings[0].shape
  return embeddings[0], embeddings[1], embeddings[2].reshape(rows, -1, width)


def embed_batch(model_config: ModelConfig, params, batch, rng=None):
  """(query, positive, negatives or None) embeddings of a batch, float32, unnormalised."""
  return _as_triple([_join_rows([apply_model(model_config, params, ids, mask, r)
                                 for ids, mask, r in parts])
                     for parts in _text_streams(batch, rng)])


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
  total = loss_config.contrastive_weight * total
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


def distillation_loss(loss_config: LossConfig, student, teacher, batch):
  """The teacher's embeddings taught to the student's (query, positive, negatives or None):
  weighted embedding matching over every text and similarity-structure matching over the batch
  at every MRL dim; returns (loss, metrics)."""
  query, positive, negatives = student
  t_query, t_positive, t_negatives = teacher
  documents, t_documents, valid = [positive], [t_positive], [jnp.ones(positive.shape[0], bool)]
  if negatives is not None:
    documents.append(negatives.reshape(-1, negatives.shape[-1]))
    t_documents.append(t_negatives.reshape(-1, t_negatives.shape[-1]))
    valid.append(batch["negative_valid"].reshape(-1) if "negative_valid" in batch
                 else jnp.ones(documents[-1].shape[0], bool))
  documents, t_documents, valid = (jnp.concatenate(x) for x in (documents, t_documents, valid))
  total, metrics = 0.0, {}
  if loss_config.distill_embedding:
    texts = jnp.concatenate([query, documents])
    t_texts = jnp.concatenate([t_query, t_documents])
    text_valid = jnp.concatenate([jnp.ones(query.shape[0], bool), valid])
    metrics["distill_embedding"] = losses.embedding_distillation_loss(
        texts, t_texts, text_valid, kind=loss_config.distill_embedding_kind)
    total = total + loss_config.distill_embedding * metrics["distill_embedding"]
  if loss_config.distill_similarity:
    metrics["distill_similarity"] = losses.similarity_distillation_loss(
        query, documents, t_query, t_documents, valid,
        dims=loss_config.dims or (query.shape[-1],), temperature=loss_config.temperature)
    total = total + loss_config.distill_similarity * metrics["distill_similarity"]
  return total, metrics


def embeddings_loss(loss_config: LossConfig, student, batch, teacher=None):
  """The training loss on a batch's embeddings: contrastive (+ prefix distillation), plus the
  teacher's distillation terms when `teacher` embeddings are given; returns (loss, metrics)."""
  total, metrics = contrastive_loss(loss_config, *student, batch)
  if teacher is not None:
    distill, distill_metrics = distillation_loss(loss_config, student, teacher, batch)
    total = total + distill
    metrics.update(distill_metrics, loss=total)
  return total, metrics


def loss_fn(params, batch, rng, model_config: ModelConfig, loss_config: LossConfig, teacher=None):
  student = embed_batch(model_config, frozen_base(params, model_config), batch, rng)
  return embeddings_loss(loss_config, student, batch_schema.merged_rows(batch), teacher)


def embed_in_chunks(model_config: ModelConfig, params, batch, rng, chunk_size: int):
  """`embed_batch` `chunk_size` rows at a time with no activations kept (no gradient): GradCache's
  first pass, and a teacher's embeddings. Each chunk's dropout rng is folded from its index."""
  embeddings = []
  for parts in _text_streams(batch, rng):
    pieces = []
    for ids, mask, part_rng in parts:
      def embed(_, chunk, part_rng=part_rng):
        index, ids_c, mask_c = chunk
        r = None if part_rng is None else jax.random.fold_in(part_rng, index)
        return None, apply_model(model_config, params, ids_c, mask_c, r)
      chunked = (chunks.to_chunks(ids, chunk_size), chunks.to_chunks(mask, chunk_size))
      _, out = jax.lax.scan(embed, None, (jnp.arange(chunked[0].shape[0]), *chunked))
      pieces.append(chunks.from_chunks(out))
    embeddings.append(jax.lax.stop_gradient(_join_rows(pieces)))
  return _as_triple(embeddings)


def cached_loss_and_grads(params, batch, rng, model_config: ModelConfig, loss_config: LossConfig,
                          chunk_size: int, teacher=None):
  """GradCache (Gao et al., 2021): the loss and parameter gradients of `loss_fn` with activation
  memory of one chunk instead of the whole global batch.

  1. Embed every text in chunks of `chunk_size` rows, keeping no activations.
  2. Loss over the whole global batch (every in-batch and hard negative, the false-negative mask,
     MRL, the teacher's terms) and its gradient with respect to the embeddings, its logits also
     `chunk_size` query rows at a time (or the ring loss), so that no B x B matrix is held.
  3. Chunk by chunk, recompute the forward pass and pull that gradient back to the parameters.
  Each chunk's dropout rng is fixed by its index, so steps 1 and 3 see the same masks.
  """
  embeddings = embed_in_chunks(model_config, params, batch, rng, chunk_size)
  rows = batch_schema.merged_rows(batch)
  if not loss_config.ring:  # the global B x B logits would otherwise dominate memory
    loss_config = dataclasses.replace(loss_config, row_chunk=chunk_size)

  def loss_on_embeddings(*student):
    student = student + (None,) * (3 - len(student))
    return embeddings_loss(loss_config, student, rows, teacher)

  argnums = (0, 1, 2) if embeddings[2] is not None else (0, 1)
  (loss, metrics), embedding_grads = jax.value_and_grad(
      loss_on_embeddings, argnums=argnums, has_aux=True)(*embeddings[:len(argnums)])

  grads = jax.tree.map(jnp.zeros_like, params)
  for parts, cotangent in zip(_text_streams(batch, rng), embedding_grads):
    cotangent = cotangent.reshape(-1, cotangent.shape[-1])
    start = 0
    for ids, mask, part_rng in parts:
      def backprop(acc, chunk, part_rng=part_rng):
        index, ids_c, mask_c, g_c = chunk
        r = None if part_rng is None else jax.random.fold_in(part_rng, index)
        _, pull = jax.vjp(lambda p: apply_model(model_config, frozen_base(p, model_config), ids_c,
                                                mask_c, r), params)
        return jax.tree.map(jnp.add, acc, pull(g_c)[0]), None
      part_cotangent = cotangent[start:start + ids.shape[0]]
      start += ids.shape[0]
      chunked = [chunks.to_chunks(x, chunk_size) for x in (ids, mask, part_cotangent)]
      grads, _ = jax.lax.scan(backprop, grads, (jnp.arange(chunked[0].shape[0]), *chunked))
  return (loss, metrics), grads


def teacher_embeddings(batch, teacher_params=None, teacher_config: ModelConfig | None = None,
                       grad_cache_chunk: int = 0):
  """The teacher's (query, positive, negatives or None) embeddings of a batch, or None: the
  batch's precomputed ones (distill.teacher_embeddings), else, with `teacher_params` (a model of
  `teacher_config` sharing the student's tokenizer), the teacher embedding the same token ids
  without dropout or gradient (in chunks under GradCache)."""
  if "teacher_query" in batch_schema.row_groups(batch)[0]:
    rows = batch_schema.merged_rows(batch)
    return rows["teacher_query"], rows["teacher_positive"], rows.get("teacher_negatives")
  if teacher_params is None:
    return None
  if grad_cache_chunk:
    return embed_in_chunks(teacher_config, teacher_params, batch, None, grad_cache_chunk)
  return jax.lax.stop_gradient(embed_batch(teacher_config, teacher_params, batch))


def train_step(state: TrainState, batch, teacher_params=None, *, model_config: ModelConfig,
               loss_config: LossConfig, optimizer: optax.GradientTransformation,
               schedule: Callable, grad_cache_chunk: int = 0,
               teacher_config: ModelConfig | None = None):
  """One optimizer step; returns (new state, metrics). Pure: jit it with shardings.

  `grad_cache_chunk` > 0 computes the same loss and gradients with GradCache, in chunks of that
  many rows (memory flat in the global batch size). The distillation terms take their teacher
  embeddings from `teacher_embeddings`.
  """
  rng, dropout_rng = jax.random.split(state.rng)
  dropout_rng = dropout_rng if model_config.dropout_rate > 0 else None
  teacher = teacher_embeddings(batch, teacher_params, teacher_config, grad_cache_chunk)
  if loss_config.distills and teacher is None:
    raise ValueError("the loss distils but the step has neither teacher parameters nor the "
                     "batch's precomputed teacher embeddings")
  if grad_cache_chunk:
    (_, metrics), grads = cached_loss_and_grads(state.params, batch, dropout_rng, model_config,
                                                loss_config, grad_cache_chunk, teacher)
  else:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, dropout_rng, model_config, loss_config,
                                  teacher)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, metrics

