"""The preprocessors of every training task, in order (gembed.data.tasks): prompts ->
[precomputed teacher embeddings] -> identity keys -> tokenize -> model inputs (token ids,
lengths, validity, keys[, teacher embeddings]).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gembed.textio import identity_key

_DRAW_BUCKETS = 2**53  # uniform draws from a hash, exact in float64


def _template_parts(template: str, field: str):
  """'task: {task} | query: {text}' -> the literal pieces around {text} (task filled in later)."""
  if template.count("{" + field + "}") != 1:
    raise ValueError(f"template {template!r} must contain {{{field}}} exactly once")
  return template.split("{" + field + "}")


def apply_prompts(ds, *, query_prompt: str, document_format: str, prompt_task: str,
                  num_negatives: int, task_dropout: float = 0.0, dropout_seed: int = 0):
  """Formats queries with the task prompt and documents with the document format, in TF.

  `task_dropout`: the probability that a query's task string is replaced by an empty task
  (GE2's random task-string dropout). The draw is a hash of (seed, query, positive): seeded,
  the same on every host and epoch, so resumed iterators continue exactly.
  """
  if not 0.0 <= task_dropout <= 1.0:
    raise ValueError(f"prompts.task_dropout {task_dropout}: expected a probability in [0, 1]")

  def query_parts(task):
    return _template_parts(query_prompt.replace("{task}", task), "text") if query_prompt else ("", "")
  q_before, q_after = query_parts(prompt_task)
  dropout = task_dropout > 0 and "{task}" in query_prompt
  empty_before, empty_after = query_parts("")

  def document(text, title):
    if not document_format:  # MTEB convention: title + " " + text
      return tf.where(tf.strings.length(title) > 0, tf.strings.join([title, " ", text]), text)
    fmt = document_format.replace("{title}", "\x00")
    before, after = _template_parts(fmt, "text")
    title = tf.where(tf.strings.length(title) > 0, title, "none")
    parts = [tf.strings.regex_replace(before, "\x00", title), text,
             tf.strings.regex_replace(after, "\x00", title)]
    return tf.strings.join(parts)

  def fn(ex):
    ex = dict(ex)
    ex["query_text"] = tf.strings.join([q_before, ex["query"], q_after])
    if dropout:
      draw = tf.strings.to_hash_bucket_strong(tf.strings.join([ex["query"], ex["positive"]], "\x00"),
                                              _DRAW_BUCKETS, key=[dropout_seed, 1])
      ex["query_text"] = tf.where(tf.cast(draw, tf.float64) < task_dropout * _DRAW_BUCKETS,
                                  tf.strings.join([empty_before, ex["query"], empty_after]),
                                  ex["query_text"])
    ex["positive_text"] = document(ex["positive"], ex["title"])
    for k in range(num_negatives):
      ex[f"negative_{k}_text"] = document(ex[f"negative_{k}"], tf.constant(""))
    return ex

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def teacher_embeddings(ds, *, store, num_negatives: int):
  """teacher_query / teacher_positive / teacher_negative_k: each formatted text's precomputed
  teacher embedding (gembed.data.teacher_store); zeros for a missing hard negative."""
  from gembed.data.teacher_store import DOCUMENT, QUERY

  def look_up(query, positive, *negatives_and_valid):
    out = [store.lookup(QUERY, query), store.lookup(DOCUMENT, positive)]
    for text, valid in zip(negatives_and_valid[::2], negatives_and_valid[1::2]):
      out.append(store.lookup(DOCUMENT, text) if valid else np.zeros(store.dim, np.float32))
    return out

  names = ["teacher_query", "teacher_positive"] + [f"teacher_negative_{k}"
                                                   for k in range(num_negatives)]

  def fn(ex):
    ex = dict(ex)
    inputs = [ex["query_text"], ex["positive_text"]]
    for k in range(num_negatives):
      inputs += [ex[f"negative_{k}_text"], ex[f"negative_{k}_valid"]]
    found = tf.numpy_function(look_up, inputs, [tf.float32] * len(names), stateful=False)
    for name, value in zip(names, found):
      ex[name] = tf.ensure_shape(value, [store.dim])
    return ex
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def identity_keys(ds):
  """query_key / positive_key: `textio.identity_key` of each text (its id when given), the same
  definition as the data stage's de-duplication."""
  def keys(query, query_id, positive, positive_id):
    return (np.int32(identity_key(query.decode("utf-8"), query_id.decode("utf-8"))),
            np.int32(identity_key(positive.decode("utf-8"), positive_id.decode("utf-8"))))

  def fn(ex):
    ex = dict(ex)
    query_key, positive_key = tf.numpy_function(
        keys, [ex["query"], ex["query_id"], ex["positive"], ex["positive_id"]],
        [tf.int32, tf.int32], stateful=False)
    ex["query_key"] = tf.ensure_shape(query_key, [])
    ex["positive_key"] = tf.ensure_shape(positive_key, [])
    return ex
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def text_features(num_negatives: int) -> list[str]:
  return ["query", "positive"] + [f"negative_{k}" for k in range(num_negatives)]


def select_model_inputs(ds, num_negatives: int):
  """Keeps token ids, lengths, validity, keys and teacher embeddings (drops raw strings)."""
  def fn(ex):
    out = {k: v for k, v in ex.items() if k.startswith("teacher_")}
    out.update(query_key=ex["query_key"], positive_key=ex["positive_key"])
    for name in text_features(num_negatives):
      out[name] = ex[name]
      out[f"{name}_length"] = tf.size(ex[name])
      if name.startswith("negative_"):
        out[f"{name}_valid"] = ex[f"{name}_valid"]
    return out
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


TEXTS_PER_TOKENIZE = 256  # examples per tokenizer call: TensorFlow's per-op cost spread over them


def tokenize_formatted(ds, *, rename, output_features):
  """The formatted texts' ids under the feature names (each `{feature}_text` -> `feature`),
  TEXTS_PER_TOKENIZE examples per call of the vocabulary's batch encoder (ids as SeqIO's
  tokenize gives them, several times the texts/s of one text per call)."""
  def tokenize(batch):
    batch = dict(batch)
    for feature, text_key in rename.items():
      batch[feature] = output_features[feature].vocabulary.encode_batch_tf(batch.pop(text_key))
    return batch
  return ds.batch(TEXTS_PER_TOKENIZE).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
