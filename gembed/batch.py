"""The training batch: one definition of its fields, shapes and dtypes.

Over the global batch of B rows, K hard-negative slots, Lq query and Ld document tokens:

  query_ids, query_mask           (B, Lq) int32
  positive_ids, positive_mask     (B, Ld) int32
  negative_ids, negative_mask     (B, K, Ld) int32   (absent when K = 0)
  negative_valid                  (B, K) bool        (False for a missing hard negative)
  query_key, positive_key         (B,) int32         identity keys (the false-negative mask)

With precomputed teacher embeddings of width D (distill.teacher_embeddings):

  teacher_query, teacher_positive (B, D) float32
  teacher_negatives               (B, K, D) float32  (zeros for a missing hard negative)

With data.length_groups = G > 1 a batch is a tuple of G such dicts: its rows sorted by their
longest text and cut into G groups of B / G rows, each group cut to its own length bucket, so
short rows are not padded to the longest row's length. The encoder runs once per group and
stream; the loss sees every group's rows together (`row_groups`, `merged_rows`).

The data pipeline produces it (gembed.data.batching), the step consumes it (gembed.steps), and
the AOT check and the benchmarks describe it without data.
"""

from __future__ import annotations

import numpy as np


def shapes(batch_size: int, query_length: int, document_length: int,
           num_negatives: int, teacher_dim: int = 0) -> dict[str, tuple[tuple[int, ...], type]]:
  """{field: (shape, dtype)} of a batch; lengths may be cut to a bucket (data.length_buckets)."""
  b, k = batch_size, num_negatives
  out = {"query_ids": ((b, query_length), np.int32), "query_mask": ((b, query_length), np.int32),
         "positive_ids": ((b, document_length), np.int32),
         "positive_mask": ((b, document_length), np.int32)}
  if k:
    out.update(negative_ids=((b, k, document_length), np.int32),
               negative_mask=((b, k, document_length), np.int32),
               negative_valid=((b, k), np.bool_))
  out.update(query_key=((b,), np.int32), positive_key=((b,), np.int32))
  if teacher_dim:
    out.update(teacher_query=((b, teacher_dim), np.float32),
               teacher_positive=((b, teacher_dim), np.float32))
    if k:
      out["teacher_negatives"] = ((b, k, teacher_dim), np.float32)
  return out


TEXT_FIELDS = ("query_ids", "query_mask", "positive_ids", "positive_mask", "negative_ids",
               "negative_mask")


def row_groups(batch) -> list[dict]:
  """The batch's row groups: [batch] for one dict, the groups of a tuple (data.length_groups)."""
  return list(batch) if isinstance(batch, (tuple, list)) else [batch]


def from_groups(groups: list[dict]):
  """The batch of these row groups: the lone dict for one group, else a tuple (`row_groups`'s
  inverse)."""
  return groups[0] if len(groups) == 1 else tuple(groups)


def merged_rows(batch) -> dict:
  """Every field but the token ids and masks over all rows of the batch, groups in order: what
  the loss reads beside the embeddings (identity keys, hard-negative validity, teacher
  embeddings). The embeddings of a grouped batch are concatenated in the same order."""
  import jax.numpy as jnp
  groups = row_groups(batch)
  names = [k for k in groups[0] if k not in TEXT_FIELDS]
  if len(groups) == 1:
    return {k: groups[0][k] for k in names}
  return {k: jnp.concatenate([g[k] for g in groups]) for k in names}


def text_lengths(batch) -> list[tuple[int, int]]:
  """(query, document) tokens per row group: the lengths the step compiles for."""
  return [(g["query_ids"].shape[-1], g["positive_ids"].shape[-1]) for g in row_groups(batch)]


def pad_lengths(batch: dict, query_length: int, document_length: int, pad_id: int) -> dict:
  """A host batch (NumPy) padded to these query / document lengths: ids with `pad_id`, masks
  with 0, so every row embeds as before (several hosts agreeing on one length bucket)."""
  targets = {"query": query_length, "positive": document_length, "negative": document_length}
  out = dict(batch)
  for side, length in targets.items():
    for field, value in ((f"{side}_ids", pad_id), (f"{side}_mask", 0)):
      if field in batch:
        x = batch[field]
        if x.shape[-1] > length:
          raise ValueError(f"{field} has {x.shape[-1]} tokens, more than the {length} to pad to")
        widths = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
        out[field] = np.pad(x, widths, constant_values=value)
  return out
