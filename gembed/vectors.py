"""Embedding vectors: L2 normalisation and exact top-k search, one definition each.

The search streams corpus chunks past one query chunk at a time and keeps a running top-k on the
accelerator: memory is O(query_chunk x corpus_chunk), never queries x corpus. Per-query
exclusions are masked inside the search, so every query still gets k admissible neighbours.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gembed.progress import progress_bar


def l2_normalize(x):
  """x / max(||x||, 1e-12) over the last axis, as torch.nn.functional.normalize and
  sentence-transformers' Normalize. numpy in, numpy out; JAX arrays (also traced) stay JAX."""
  xp = np if isinstance(x, np.ndarray) else jnp
  norm = xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True))
  return x / xp.maximum(norm, 1e-12)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_block(queries, block, offset, num_valid, exclude, best_scores, best_ids, *, k):
  """Scores one corpus block against a query chunk and merges it into the running top-k."""
  scores = queries @ block.T  # (Q, C)
  columns = offset + jnp.arange(block.shape[0])
  scores = jnp.where(columns[None, :] < num_valid, scores, -jnp.inf)  # padding rows
  local = exclude - offset  # (Q, E) global ids -> block columns; -1 padding falls outside
  local = jnp.where((exclude >= 0) & (local >= 0) & (local < block.shape[0]), local, block.shape[0])
  rows = jnp.broadcast_to(jnp.arange(scores.shape[0])[:, None], local.shape)
  scores = scores.at[rows, local].set(-jnp.inf, mode="drop")
  merged = jnp.concatenate([best_scores, scores], axis=1)
  merged_ids = jnp.concatenate([best_ids, jnp.broadcast_to(columns, scores.shape)], axis=1)
  top, where = jax.lax.top_k(merged, k)
  return top, jnp.take_along_axis(merged_ids, where, axis=1)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, exclude: list[list[int]] | None = None,
          *, query_chunk: int = 1024, corpus_chunk: int = 16384, progress: bool = False):
  """Exact top-k by dot product (cosine for unit vectors), `exclude[i]`: corpus ids query i may
  not return. Returns (scores (Q, k) float32, ids (Q, k) int64); slots beyond
  the corpus (fewer than k admissible neighbours) hold id -1 and score -inf."""
  num_queries, num_docs = len(queries), len(corpus)
  k_eff = min(k, max(num_docs, 1))
  width = max([len(e) for e in exclude or []] + [1])
  excl = np.full((num_queries, width), -1, np.int64)
  for i, ids in enumerate(exclude or []):
    excl[i, :len(ids)] = ids
  query_chunk = min(query_chunk, max(num_queries, 1))
  corpus_chunk = min(corpus_chunk, max(num_docs, 1))
  scores_out = np.full((num_queries, k), -np.inf, np.float32)
  ids_out = np.full((num_queries, k), -1, np.int64)
  bar = progress_bar(-(-num_queries // query_chunk) * -(-num_docs // corpus_chunk), progress,
                     "searching", unit="block")
  for qs in range(0, num_queries, query_chunk):
    q = _pad_rows(np.asarray(queries[qs:qs + query_chunk], np.float32), query_chunk)
    e = _pad_rows(excl[qs:qs + query_chunk], query_chunk, fill=-1)
    best = jnp.full((query_chunk, k_eff), -jnp.inf, jnp.float32)
    best_ids = jnp.full((query_chunk, k_eff), -1, jnp.int32)
    for cs in range(0, num_docs, corpus_chunk):
      block = _pad_rows(np.asarray(corpus[cs:cs + corpus_chunk], np.float32), corpus_chunk)
      best, best_ids = _merge_block(q, block, cs, num_docs, e, best, best_ids, k=k_eff)
      bar.update(1)
    n = min(query_chunk, num_queries - qs)
    scores_out[qs:qs + n, :k_eff] = np.asarray(best)[:n]
    ids_out[qs:qs + n, :k_eff] = np.asarray(best_ids)[:n]
  bar.close()
  ids_out[~np.isfinite(scores_out)] = -1
  return scores_out, ids_out


def _pad_rows(x: np.ndarray, rows: int, fill=0):
  if len(x) == rows:
    return x
  pad = np.full((rows - len(x), *x.shape[1:]), fill, x.dtype)
  return np.concatenate([x, pad])
