"""Batches of one task: padded to static lengths, explicit attention masks from the lengths,
the fields of gembed.batch; optionally cut to a length bucket, or sorted by length into row
groups each cut to its own bucket.
"""

from __future__ import annotations

import tensorflow as tf

from gembed import batch as batch_schema
from gembed.data.preprocessors import text_features


def trim_to_bucket(batch, buckets: tuple[int, ...]):
  """Cuts a padded batch to the smallest bucket holding its longest query / document.

  Queries and documents (positives with hard negatives) get their own bucket, so short-text
  tasks do not pay for the longest configured length; jit compiles once per bucket pair.
  """
  bounds = tf.constant(sorted(buckets), tf.int32)

  def bucket(mask):
    longest = tf.reduce_max(tf.reduce_sum(tf.reshape(mask, [-1, tf.shape(mask)[-1]]), axis=1))
    index = tf.minimum(tf.searchsorted(bounds, [longest], side="left")[0], tf.size(bounds) - 1)
    return tf.minimum(bounds[index], tf.shape(mask)[-1])

  out = dict(batch)
  q = bucket(batch["query_mask"])
  out["query_ids"], out["query_mask"] = batch["query_ids"][:, :q], batch["query_mask"][:, :q]
  doc_masks = [batch["positive_mask"]] + ([tf.reshape(batch["negative_mask"], [-1, tf.shape(batch["negative_mask"])[-1]])]
                                          if "negative_mask" in batch else [])
  d = bucket(tf.concat(doc_masks, axis=0))
  out["positive_ids"], out["positive_mask"] = batch["positive_ids"][:, :d], batch["positive_mask"][:, :d]
  if "negative_ids" in batch:
    out["negative_ids"], out["negative_mask"] = batch["negative_ids"][..., :d], batch["negative_mask"][..., :d]
  return out


def group_by_length(batch, groups: int, buckets: tuple[int, ...]):
  """The batch's rows sorted by their longest text (stable) and cut into `groups` groups of
  equal rows, each cut to its own bucket: a tuple of batches (data.length_groups). Every row
  keeps its fields together, so the loss over all groups is the loss over the batch."""
  lengths = [tf.reduce_sum(batch["query_mask"], -1), tf.reduce_sum(batch["positive_mask"], -1)]
  if "negative_mask" in batch:
    lengths.append(tf.reduce_max(tf.reduce_sum(batch["negative_mask"], -1), -1))
  order = tf.argsort(tf.reduce_max(tf.stack(lengths), 0), stable=True)
  rows = batch["query_mask"].shape[0] // groups
  ordered = {k: tf.gather(v, order) for k, v in batch.items()}
  return tuple(trim_to_bucket({k: v[i * rows:(i + 1) * rows] for k, v in ordered.items()}, buckets)
               for i in range(groups))


def batch_task(ds, *, batch_size: int, query_length: int, document_length: int, num_negatives: int,
               pad_id: int, length_buckets: tuple[int, ...] = (), length_groups: int = 1,
               teacher_dim: int = 0):
  """Pads to static lengths, batches, and builds explicit attention masks from lengths;
  with `length_buckets`, each batch is then cut to the bucket of its longest text, or with
  `length_groups` > 1 sorted into that many row groups, each cut to its own bucket.
  `teacher_dim` > 0: the examples carry precomputed teacher embeddings of that width."""
  lengths = {"query": query_length}
  lengths.update({n: document_length for n in text_features(num_negatives)[1:]})
  shapes = {k: [] for k in ("query_key", "positive_key")}
  values = {"query_key": 0, "positive_key": 0}
  for name, length in lengths.items():
    shapes[name], values[name] = [length], pad_id
    shapes[f"{name}_length"], values[f"{name}_length"] = [], 0
    if name.startswith("negative_"):
      shapes[f"{name}_valid"], values[f"{name}_valid"] = [], False
  if length_groups > 1 and (not length_buckets or batch_size % length_groups):
    raise ValueError(f"data.length_groups {length_groups} needs data.length_buckets and a host "
                     f"batch ({batch_size} rows) that it divides")
  teacher_names = [f"teacher_{n}" for n in text_features(num_negatives)] if teacher_dim else []
  for name in teacher_names:
    shapes[name], values[name] = [teacher_dim], 0.0
  ds = ds.padded_batch(batch_size, padded_shapes=shapes, padding_values=values, drop_remainder=True)

  def to_model_batch(ex):
    out = {"query_key": ex["query_key"], "positive_key": ex["positive_key"]}
    for side, length in (("query", query_length), ("positive", document_length)):
      out[f"{side}_ids"] = ex[side]
      out[f"{side}_mask"] = tf.sequence_mask(ex[f"{side}_length"], length, tf.int32)
    if num_negatives:
      names = text_features(num_negatives)[2:]
      out["negative_ids"] = tf.stack([ex[n] for n in names], axis=1)
      out["negative_mask"] = tf.stack(
          [tf.sequence_mask(ex[f"{n}_length"], document_length, tf.int32) for n in names], axis=1)
      out["negative_valid"] = tf.stack([ex[f"{n}_valid"] for n in names], axis=1)
    if teacher_dim:
      out["teacher_query"], out["teacher_positive"] = ex["teacher_query"], ex["teacher_positive"]
      if num_negatives:
        out["teacher_negatives"] = tf.stack([ex[f"teacher_{n}"] for n in names], axis=1)
    schema = batch_schema.shapes(batch_size, query_length, document_length, num_negatives,
                                 teacher_dim)
    return {name: tf.cast(out[name], dtype) for name, (_, dtype) in schema.items()}

  ds = ds.map(to_model_batch, num_parallel_calls=tf.data.AUTOTUNE)
  if length_groups > 1:
    ds = ds.map(lambda b: group_by_length(b, length_groups, tuple(length_buckets)),
                num_parallel_calls=tf.data.AUTOTUNE)
  elif length_buckets:
    ds = ds.map(lambda b: trim_to_bucket(b, tuple(length_buckets)), num_parallel_calls=tf.data.AUTOTUNE)
  return ds
