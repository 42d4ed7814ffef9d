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
