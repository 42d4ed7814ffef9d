"""Contrastive losses as pure functions of embeddings (method.md section 2).

Shapes: B rows in the *global* batch, K hard-negative slots per row, D embedding width.
Under `jax.jit` with a sharded batch these functions see the whole global arrays, and XLA
inserts the gathers, so in-batch negatives span every device.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from gembed import chunks
from gembed.vectors import l2_normalize

_MASKED = -1e9  # a finite "minus infinity": logsumexp stays finite even if a row masks everything


def _unit(x):
  return l2_normalize(x.astype(jnp.float32))  # scores in float32 whatever the compute dtype


def _kl_rows(teacher_logits, student_logits):
  """KL(softmax(teacher) || softmax(student)) per row; no gradient into the teacher."""
  teacher = jax.lax.stop_gradient(jax.nn.log_softmax(teacher_logits, axis=-1))
  student = jax.nn.log_softmax(student_logits, axis=-1)
  return jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)


def _row_terms(q_rows, row_ids, row_query_keys, row_positive_keys, hard_rows, *, positive,
               query_keys, positive_keys, temperature, decoupled):
  """Per-row NCE terms (log-denominator - positive logit) and top-1 hits of the rows `row_ids`
  against every positive of the batch: (c, B) logits for c rows."""
  in_batch = (q_rows @ positive.T) / temperature  # float32
  own = row_ids[:, None] == jnp.arange(positive.shape[0])[None, :]
  positive_logit = jnp.sum(jnp.where(own, in_batch, 0.0), axis=1)
  same = ((row_query_keys[:, None] == query_keys[None, :]) |
          (row_positive_keys[:, None] == positive_keys[None, :]))
  allowed = ~same | own  # off-diagonal false negatives out; the own positive stays
  if decoupled:
    allowed = allowed & ~own
  logits = jnp.where(allowed, in_batch, _MASKED)
  best_negative = jnp.max(jnp.where(own, _MASKED, logits), axis=1)
  if hard_rows is not None:
    logits = jnp.concatenate([logits, hard_rows], axis=1)
    best_negative = jnp.maximum(best_negative, jnp.max(hard_rows, axis=1))
  return jax.nn.logsumexp(logits, axis=1) - positive_logit, positive_logit > best_negative


def nce_loss(query, positive, negatives=None, negative_valid=None, *, query_keys, positive_keys,
             temperature: float, decoupled: bool = False, row_chunk: int = 0):
  """Masked NCE with in-batch and hard negatives; returns (loss, top-1 accuracy).

  Args:
    query: (B, D) query embeddings (any scale; cosine similarity is used).
    positive: (B, D) positive document embeddings.
    negatives: optional (B, K, D) hard negatives; row i sees only its own K.
    negative_valid: optional (B, K) bool, False for missing hard negatives.
    query_keys, positive_keys: (B,) integer identity keys of the texts (false-negative mask).
    temperature: tau in exp(s / tau).
    decoupled: drop each row's own positive from its denominator, as method.md's mask read
      literally (decoupled contrastive loss); an ablation, off by default.
    row_chunk: > 0 computes the logits `row_chunk` query rows at a time, recomputed in the
      backward pass: memory O(row_chunk x B) instead of O(B x B), same result (GradCache).
  """
  q, p = _unit(query), _unit(positive)
  batch = q.shape[0]
  hard = None
  if negatives is not None:
    hard = jnp.einsum("bd,bkd->bk", q, _unit(negatives)) / temperature  # (B, K)
    if negative_valid is not None:
      hard = jnp.where(negative_valid, hard, _MASKED)
  rows = (q, jnp.arange(batch), query_keys, positive_keys, hard)
  terms = functools.partial(_row_terms, positive=p, query_keys=query_keys,
                            positive_keys=positive_keys, temperature=temperature, decoupled=decoupled)
  if row_chunk and row_chunk < batch:
    chunked = jax.tree.map(lambda x: chunks.to_chunks(x, row_chunk), rows)
    per_row, hits = jax.lax.map(jax.checkpoint(lambda xs: terms(*xs)), chunked)
    per_row, hits = chunks.from_chunks(per_row), chunks.from_chunks(hits)
  else:
    per_row, hits = terms(*rows)
  return jnp.mean(per_row), jnp.mean(hits.astype(jnp.float32))


def ring_nce_loss(query, positive, negatives=None, negative_valid=None, *, query_keys,
                  positive_keys, temperature: float, decoupled: bool = False, axis_name,
                  axis_size: int):
  """`nce_loss` for use inside `shard_map`: each device holds B / axis_size rows, and the
  positives (with their identity keys) travel around the ring of devices with `ppermute`.

  Each device only ever holds a (B / n) x (B / n) block of logits; the denominator is merged
  block by block with logaddexp, so the result equals `nce_loss` on the global batch.
  """
  q, p = _unit(query), _unit(positive)
  rows = q.shape[0]
  positive_logit = jnp.sum(q * p, axis=-1) / temperature
  if negatives is not None:
    hard = jnp.einsum("bd,bkd->bk", q, _unit(negatives)) / temperature
    if negative_valid is not None:
      hard = jnp.where(negative_valid, hard, _MASKED)
    denominator, best_negative = jax.nn.logsumexp(hard, axis=1), jnp.max(hard, axis=1)
  else:
    denominator = best_negative = jnp.full((rows,), _MASKED, jnp.float32)

  @jax.checkpoint  # keep only the block inputs for the backward pass, not its logits
  def block(block_p, block_query_keys, block_positive_keys, own):
    logits = (q @ block_p.T) / temperature
    same = ((query_keys[:, None] == block_query_keys[None, :]) |
            (positive_keys[:, None] == block_positive_keys[None, :]))
    allowed = ~same | own
    if decoupled:
      allowed = allowed & ~own
    logits = jnp.where(allowed, logits, _MASKED)
    return jax.nn.logsumexp(logits, axis=1), jnp.max(jnp.where(own, _MASKED, logits), axis=1)

  shift = [(i, (i + 1) % axis_size) for i in range(axis_size)]
  travelling = (p, query_keys, positive_keys)
  for step in range(axis_size):  # step s holds the positives of device (index - s) mod n
    own = jnp.eye(rows, dtype=bool) if step == 0 else jnp.zeros((rows, rows), bool)
    block_lse, block_best = block(*travelling, own)
    denominator = jnp.logaddexp(denominator, block_lse)
    best_negative = jnp.maximum(best_negative, block_best)
    if step + 1 < axis_size:
      travelling = jax.tree.map(lambda x: jax.lax.ppermute(x, axis_name, shift), travelling)
  total_rows = rows * axis_size
  loss = jax.lax.psum(jnp.sum(denominator - positive_logit), axis_name) / total_rows
  correct = jnp.sum((positive_logit > best_negative).astype(jnp.float32))
  return loss, jax.lax.psum(correct, axis_name) / total_rows


def prefix_distillation_loss(query, positive, *, dims: Sequence[int], temperature: float,
                             row_chunk: int = 0):
  """MRL prefixes taught by the model's own full width: for each prefix d below the full width,
  KL(softmax over in-batch positives at full width || the same at d), mean over rows, summed
  over dims. The full-width ranking is the teacher (no gradient flows into it), so the prefixes
  learn the structure the full embedding already has (the similarity-structure distillation of
  Matryoshka-Adaptor and EmbeddingGemma, with the teacher inside the model).

  `row_chunk` > 0: the (rows x B) logits `row_chunk` query rows at a time (GradCache memory).
  """
  width = query.shape[-1]
  small = [d for d in dims if d < width]
  if not small:
    return jnp.zeros((), jnp.float32)
  p_full = _unit(positive)
  p_small = [_unit(positive[:, :d]) for d in small]

  def rows_kl(q_rows):
    teacher = _unit(q_rows) @ p_full.T / temperature
    return sum(_kl_rows(teacher, _unit(q_rows[:, :d]) @ p_d.T / temperature)
               for d, p_d in zip(small, p_small))

  if row_chunk and row_chunk < query.shape[0]:
    per_row = chunks.from_chunks(jax.lax.map(jax.checkpoint(rows_kl), chunks.to_chunks(query, row_chunk)))
  else:
    per_row = rows_kl(query)
  return jnp.mean(per_row)


def similarity_distillation_loss(query, documents, teacher_query, teacher_documents,
                                 document_valid=None, *, dims: Sequence[int], temperature: float):
  """Similarity-structure distillation over the batch (EmbeddingGemma's geometric distillation):
  each query's softmax over every document of the batch (all positives and hard negatives),
  student against teacher, as KL(teacher || student); mean over rows, mean over the student's
  MRL `dims` (each student prefix learns the teacher's full-width geometry).

  query (B, D), documents (N, D): the student's; teacher_query (B, T), teacher_documents (N, T):
  the teacher's (any width T). document_valid: optional (N,) bool, False for padded negatives.
  """
  teacher_logits = _unit(teacher_query) @ _unit(teacher_documents).T / temperature
  valid = None if document_valid is None else document_valid[None, :]
  if valid is not None:
    teacher_logits = jnp.where(valid, teacher_logits, _MASKED)
  total = 0.0
  for d in dims:
    student_logits = _unit(query[:, :d]) @ _unit(documents[:, :d]).T / temperature
    if valid is not None:
      student_logits = jnp.where(valid, student_logits, _MASKED)
    total = total + jnp.mean(_kl_rows(teacher_logits, student_logits))
  return total / len(dims)


def embedding_distillation_loss(student, teacher, valid=None, *, kind: str = "cosine"):
  """Embedding matching, row by row: `cosine` = mean(1 - cos), `mse` = mean squared error of the
  raw values (sentence-transformers' EmbedDistillLoss). A student narrower than the teacher is
  matched to the teacher's first values: the teacher's MRL prefix (its own head maps the student's
  hidden width to that). valid: optional (N,) bool of rows that count."""
  width = student.shape[-1]
  if width > teacher.shape[-1]:
    raise ValueError(f"student embeddings ({width}) are wider than the teacher's "
                     f"({teacher.shape[-1]})")
  teacher = jax.lax.stop_gradient(teacher[..., :width].astype(jnp.float32))
  student = student.astype(jnp.float32)
  if kind == "cosine":
    per_row = 1.0 - jnp.sum(_unit(student) * _unit(teacher), axis=-1)
  elif kind == "mse":
    per_row = jnp.mean(jnp.square(student - teacher), axis=-1)
  else:
    raise ValueError(f"embedding distillation loss {kind!r}: expected 'cosine' or 'mse'")
  if valid is None:
    return jnp.mean(per_row)
  weights = valid.astype(jnp.float32)
  return jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def matryoshka_loss(query, positive, negatives=None, negative_valid=None, *, dims: Sequence[int],
                    weights: Sequence[float] | None = None, nce=nce_loss, **nce_kwargs):
  """MRL: sum_d c_d * NCE on the first d values of every embedding (re-normalised).

  Returns (total loss, {dim: loss}, {dim: accuracy}).
  """
  weights = weights or [1.0] * len(dims)
  if len(weights) != len(dims):
    raise ValueError(f"{len(weights)} MRL weights for {len(dims)} dims")
  width = query.shape[-1]
  total, losses, accuracies = 0.0, {}, {}
  for dim, weight in zip(dims, weights):
    if dim > width:
      raise ValueError(f"MRL dim {dim} exceeds the embedding width {width}")
    loss, accuracy = nce(
        query[..., :dim], positive[..., :dim],
        None if negatives is None else negatives[..., :dim], negative_valid, **nce_kwargs)
    total = total + weight * loss
    losses[dim], accuracies[dim] = loss, accuracy
  return total, losses, accuracies


def ring_matryoshka_loss(mesh, query, positive, negatives=None, negative_valid=None, *,
                         query_keys, positive_keys, batch_axes=("data", "fsdp"), **mrl_kwargs):
  """`matryoshka_loss` with the ring NCE: rows sharded over `batch_axes` of `mesh` (a Mesh or
  the AbstractMesh of `jax.set_mesh`); same results, no B x B logits on any device."""
  from jax.sharding import PartitionSpec as P

  size = 1
  for axis in batch_axes:
    size *= mesh.shape[axis]
  if query.shape[0] % size:
    raise ValueError(f"ring loss: global batch {query.shape[0]} does not divide over {size} devices")
  nce = functools.partial(ring_nce_loss, axis_name=batch_axes, axis_size=size)
  rows = P(batch_axes)
  with_negatives = negatives is not None

  def local(q, p, qk, pk, *hard):
    n, valid = hard if with_negatives else (None, None)
    return matryoshka_loss(q, p, n, valid, query_keys=qk, positive_keys=pk, nce=nce, **mrl_kwargs)

  args = (query, positive, query_keys, positive_keys)
  if with_negatives:
    if negative_valid is None:
      negative_valid = jnp.ones(negatives.shape[:2], bool)
    args += (negatives, negative_valid)
  return jax.shard_map(local, mesh=mesh, in_specs=(rows,) * len(args), out_specs=P())(*args)
