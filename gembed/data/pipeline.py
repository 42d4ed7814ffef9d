"""SeqIO tasks and the one-task-per-batch mixture (method.md section 3).

Per dataset, a SeqIO task: source rows -> `apply_prompts` (query prompt, document format)
-> `identity_keys` (hash of the normalised text, or of the row's ids) -> `seqio.preprocessors
.tokenize` with the model's vocabulary -> lengths. Batching pads every text feature to its
configured length (static shapes for jit), and the mixture draws one task per *step* from the
rates with a stateless seeded draw, so every host agrees on the task of each step and resumed
iterators continue exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import seqio
import tensorflow as tf

from gembed.data import labelled
from gembed.data.vocabulary import HfTokenizerVocabulary

log = logging.getLogger(__name__)

_HASH_BUCKETS = 2**31 - 1
_DRAW_BUCKETS = 2**53  # uniform draws from a hash, exact in float64


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One training dataset: JSONL or TFRecord files, or a TFDS dataset."""

  name: str
  files: tuple[str, ...] = ()
  prompt_task: str = "search result"  # the {task} in the query prompt
  rate: float | None = None  # explicit mixture rate; None: from the mixing rule
  weight: float = 1.0  # multiplies the proportional / temperature rule's rate
  source: str = "jsonl"  # jsonl | tfrecord | tfds | classification | clustering (data/labelled.py)
  tfds_name: str = ""  # a registered TFDS name or a prepared dataset directory (source = tfds)
  tfds_data_dir: str = ""
  split: str = "train"
  seed: int = 0  # the pairing and negatives of labelled sources


# TFRecord rows: tf.train.Example with these bytes features (negatives: any number).
TFRECORD_FEATURES = {
    "query": tf.io.FixedLenFeature([], tf.string),
    "positive": tf.io.FixedLenFeature([], tf.string),
    "title": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "query_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "positive_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "negatives": tf.io.VarLenFeature(tf.string),
}


def standardize_columns(ds, num_negatives: int, task_name: str):
  """TFRecord/TFDS examples -> the JSONL source's columns (K negative slots + validity)."""
  def fn(ex):
    out = {}
    for key in ("query", "positive"):
      tf.debugging.assert_greater(tf.strings.length(ex[key]), 0,
                                  message=f"task {task_name}: a row has an empty {key!r}")
      out[key] = ex[key]
    for key in ("title", "query_id", "positive_id"):
      out[key] = ex[key] if key in ex else tf.constant("")
    negatives = ex.get("negatives", tf.zeros([0], tf.string))
    if isinstance(negatives, tf.SparseTensor):
      negatives = tf.sparse.to_dense(negatives, default_value="")
    count = tf.size(negatives)
    padded = tf.concat([negatives, tf.fill([num_negatives], "")], axis=0)
    for k in range(num_negatives):
      out[f"negative_{k}"] = padded[k]
      out[f"negative_{k}_valid"] = k < count
    return out
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _source(spec: TaskSpec, num_negatives: int, skip_bad_rows: bool):
  """(dataset_fn, number of rows, skipped rows) for one task's source."""
  if spec.source in ("jsonl", *labelled.KINDS):
    rows = labelled.read_task_rows(spec.source, list(spec.files), num_negatives, spec.seed,
                                   skip_bad_rows)
    columns = {k: (v.astype(str) if v.dtype == object else v) for k, v in rows.as_dict().items()}
    return (lambda: tf.data.Dataset.from_tensor_slices(columns)), len(rows), rows.skipped
  if skip_bad_rows:
    raise ValueError(f"task {spec.name}: data.skip_bad_rows applies to JSONL and labelled "
                     "sources only")
  if spec.source == "tfrecord":
    missing = [f for f in spec.files if not tf.io.gfile.exists(f)]
    if missing:
      raise FileNotFoundError(f"task {spec.name}: no such TFRecord file(s): {missing}")

    def tfrecord():
      ds = tf.data.TFRecordDataset(list(spec.files))
      return standardize_columns(ds.map(lambda r: tf.io.parse_single_example(r, TFRECORD_FEATURES)),
                                 num_negatives, spec.name)
    count = int(tfrecord().reduce(0, lambda n, _: n + 1))
    return tfrecord, count, 0
  if spec.source == "tfds":
    import tensorflow_datasets as tfds

    if tf.io.gfile.isdir(spec.tfds_name):  # a prepared dataset directory (e.g. JsonlTriples')
      builder = tfds.builder_from_directory(spec.tfds_name)
    else:  # a registered TFDS name, e.g. "glue/mrpc"
      builder = tfds.builder(spec.tfds_name, data_dir=spec.tfds_data_dir or None)

    def tfds_dataset():
      return standardize_columns(builder.as_dataset(split=spec.split, shuffle_files=False),
                                 num_negatives, spec.name)
    return tfds_dataset, builder.info.splits[spec.split].num_examples, 0
  raise ValueError(f"task {spec.name}: source {spec.source!r}; use jsonl, tfrecord, tfds, "
                   f"{' or '.join(labelled.KINDS)}")


def _template_parts(template: str, field: str):
  """'task: {task} | query: {text}' -> the literal pieces around {text} (task filled in later)."""
  if template.count("{" + field + "}") != 1:
    raise ValueError(f"template {template!r} must contain {{{field}}} exactly once")
  return template.split("{" + field + "}")


def apply_prompts(ds, *, query_prompt: str, document_format: str, prompt_task: str,
                  num_negatives: int, task_dropout: float = 0.0, seed: int = 0):
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
                                              _DRAW_BUCKETS, key=[seed, 1])
      ex["query_text"] = tf.where(tf.cast(draw, tf.float64) < task_dropout * _DRAW_BUCKETS,
                                  tf.strings.join([empty_before, ex["query"], empty_after]),
                                  ex["query_text"])
    ex["positive_text"] = document(ex["positive"], ex["title"])
    for k in range(num_negatives):
      ex[f"negative_{k}_text"] = document(ex[f"negative_{k}"], tf.constant(""))
    return ex

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _normalized_hash(text, ident):
  """Identity key: hash of the id when given, else of the lower-cased, space-collapsed text."""
  norm = tf.strings.regex_replace(tf.strings.strip(tf.strings.lower(text, encoding="utf-8")),
                                  r"\s+", " ")
  key = tf.where(tf.strings.length(ident) > 0, tf.strings.join(["id:", ident]), norm)
  return tf.cast(tf.strings.to_hash_bucket_fast(key, _HASH_BUCKETS), tf.int32)


def identity_keys(ds):
  def fn(ex):
    ex = dict(ex)
    ex["query_key"] = _normalized_hash(ex["query"], ex["query_id"])
    ex["positive_key"] = _normalized_hash(ex["positive"], ex["positive_id"])
    return ex
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def text_features(num_negatives: int) -> list[str]:
  return ["query", "positive"] + [f"negative_{k}" for k in range(num_negatives)]


def select_model_inputs(ds, num_negatives: int):
  """Keeps token ids, lengths, validity and keys (drops raw strings)."""
  def fn(ex):
    out = {"query_key": ex["query_key"], "positive_key": ex["positive_key"]}
    for name in text_features(num_negatives):
      out[name] = ex[name]
      out[f"{name}_length"] = tf.size(ex[name])
      if name.startswith("negative_"):
        out[f"{name}_valid"] = ex[f"{name}_valid"]
    return out
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_task(spec: TaskSpec, *, tokenizer_file: str, query_length: int, document_length: int,
                  num_negatives: int, query_prompt: str, document_format: str,
                  skip_bad_rows: bool = False, task_dropout: float = 0.0) -> seqio.Task:
  """Registers (or re-registers) `spec` as a SeqIO task and returns it."""
  make_dataset, num_rows, skipped = _source(spec, num_negatives, skip_bad_rows)
  log.info("task %s: %d rows from %s (%d malformed rows skipped)", spec.name, num_rows,
           ", ".join(spec.files) or spec.tfds_name, skipped)

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed  # one split; example shuffling happens in SeqIO
    return make_dataset()

  query_vocab = HfTokenizerVocabulary(tokenizer_file, query_length)
  doc_vocab = HfTokenizerVocabulary(tokenizer_file, document_length)
  output_features = {
      name: seqio.Feature(query_vocab if name == "query" else doc_vocab, add_eos=False,
                          dtype=tf.int32)
      for name in text_features(num_negatives)
  }
  rename = {f"{name}": f"{name}_text" for name in text_features(num_negatives)}
  preprocessors = [
      functools.partial(apply_prompts, query_prompt=query_prompt, document_format=document_format,
                        prompt_task=spec.prompt_task, num_negatives=num_negatives,
                        task_dropout=task_dropout, seed=spec.seed),
      identity_keys,
      functools.partial(_tokenize_formatted, rename=rename, output_features=output_features),
      functools.partial(select_model_inputs, num_negatives=num_negatives),
  ]
  name = f"gembed.{spec.name}"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  task = seqio.Task(name, seqio.FunctionDataSource(dataset_fn, splits=["train"],
                                                   num_input_examples={"train": num_rows}),
                    output_features=output_features, preprocessors=preprocessors)
  seqio.TaskRegistry.add_provider(name, task)
  task.num_rows = num_rows
  task.skipped_rows = skipped
  return task


def _tokenize_formatted(ds, *, rename, output_features):
  """Tokenises the formatted texts into the feature names with SeqIO's tokenize."""
  def move(ex):
    ex = dict(ex)
    for feature, text_key in rename.items():
      ex[feature] = ex.pop(text_key)
    return ex
  ds = ds.map(move, num_parallel_calls=tf.data.AUTOTUNE)
  return seqio.preprocessors.tokenize(ds, output_features, copy_pretokenized=False, with_eos=False)


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


def batch_task(ds, *, batch_size: int, query_length: int, document_length: int, num_negatives: int,
               pad_id: int, length_buckets: tuple[int, ...] = ()):
  """Pads to static lengths, batches, and builds explicit attention masks from lengths;
  with `length_buckets`, each batch is then cut to the bucket of its longest text."""
  lengths = {"query": query_length}
  lengths.update({n: document_length for n in text_features(num_negatives)[1:]})
  shapes = {k: [] for k in ("query_key", "positive_key")}
  values = {"query_key": 0, "positive_key": 0}
  for name, length in lengths.items():
    shapes[name], values[name] = [length], pad_id
    shapes[f"{name}_length"], values[f"{name}_length"] = [], 0
    if name.startswith("negative_"):
      shapes[f"{name}_valid"], values[f"{name}_valid"] = [], False
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
    return out

  ds = ds.map(to_model_batch, num_parallel_calls=tf.data.AUTOTUNE)
  if length_buckets:
    ds = ds.map(lambda b: trim_to_bucket(b, tuple(length_buckets)), num_parallel_calls=tf.data.AUTOTUNE)
  return ds


def mixture_rates(sizes, specs: list[TaskSpec], rule: str, temperature: float = 1.0) -> np.ndarray:
  """Per-task sampling rates: explicit, or proportional to size or size**(1/temperature) times
  each task's weight; normalised to sum 1."""
  sizes = np.asarray(sizes, np.float64)
  if rule == "explicit":
    if any(s.rate is None for s in specs):
      raise ValueError("data.mixing = 'explicit' needs a rate for every task")
    rates = np.asarray([s.rate for s in specs], np.float64)
  elif rule in ("proportional", "temperature"):
    exponent = 1.0 if rule == "proportional" else 1.0 / temperature
    rates = sizes ** exponent * np.asarray([s.weight for s in specs], np.float64)
  else:
    raise ValueError(f"data.mixing {rule!r}: use proportional, temperature or explicit")
  return rates / rates.sum()


def task_choices(rates: np.ndarray, seed: int):
  """Dataset of task indices, one per step: a stateless draw keyed by (seed, step)."""
  logits = tf.math.log(tf.constant(rates, tf.float32))[None, :]
  return tf.data.Dataset.range(2**62).map(
      lambda step: tf.cast(tf.random.stateless_categorical(
          logits, 1, seed=tf.stack([tf.constant(seed, tf.int64), step]))[0, 0], tf.int64))


def make_mixture(tasks: list[seqio.Task], rates: np.ndarray, *, host_batch_size: int, seed: int,
                 shard_index: int, num_shards: int, shuffle_buffer: int, query_length: int,
                 document_length: int, num_negatives: int, pad_id: int,
                 length_buckets: tuple[int, ...] = ()):
  """Endless stream of host batches, each global batch from one task."""
  per_task = []
  for i, task in enumerate(tasks):
    ds = task.get_dataset(
        sequence_length=None, split="train", shuffle=True, num_epochs=None,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        seed=seed + 1000 * i, shuffle_buffer_size=shuffle_buffer, use_cached=False,
        trim_output_features=False)
    per_task.append(batch_task(ds, batch_size=host_batch_size, query_length=query_length,
                               document_length=document_length, num_negatives=num_negatives,
                               pad_id=pad_id, length_buckets=length_buckets))
  ds = tf.data.Dataset.choose_from_datasets(per_task, task_choices(rates, seed),
                                            stop_on_empty_dataset=True)
  ds = tf.data.Dataset.zip((task_choices(rates, seed), ds)).map(
      lambda task_index, batch: dict(batch, task_index=task_index))
  options = tf.data.Options()
  # The tokenizer runs in tf.py_function; it is stateless, so the iterator checkpoint is exact.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  options.deterministic = True
  return ds.with_options(options).prefetch(2)

