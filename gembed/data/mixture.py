"""The one-task-per-step mixture: per-task rates, a stateless seeded draw of the task of every
step (all hosts agree; resumed iterators continue exactly), the endless stream of host
batches, each global batch from one task, and the length bucket all hosts agree on.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Callable, NamedTuple

import jax
import numpy as np
import seqio
import tensorflow as tf

from gembed import batch as batch_schema
from gembed.data import offline_cache
from gembed.data.batching import batch_task
from gembed.data.sources import TaskSpec, refused_row
from gembed.data.tasks import register_task
from gembed.data.teacher_store import TeacherStore
from gembed.textio import InputError, expand_files

log = logging.getLogger(__name__)


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


# The golden ratio's fractional part: step * GOLDEN mod 1 is the most evenly spread sequence.
GOLDEN = (5 ** 0.5 - 1) / 2


def task_choices(rates: np.ndarray, seed: int, order: str = "random"):
  """Dataset of task indices, one per step, stateless in (seed, step) so that hosts agree and a
  resumed stream continues exactly.

  "random": an independent draw per step. "stratified": the step's point on a golden-ratio
  sequence (offset by the seed) picks the task whose share of [0, 1) holds it, so every window
  of n steps gives each task n x rate steps within about one; at small budgets the random draw
  does not (60 steps at rate 0.074, 4.4 expected, gave one seed 1 step and another 7)."""
  if order == "random":
    logits = tf.math.log(tf.constant(rates, tf.float32))[None, :]
    pick = lambda step: tf.cast(tf.random.stateless_categorical(
        logits, 1, seed=tf.stack([tf.constant(seed, tf.int64), step]))[0, 0], tf.int64)
  elif order == "stratified":
    bounds = tf.constant(np.cumsum(rates)[:-1], tf.float64)
    offset = np.random.default_rng(seed).random()
    pick = lambda step: tf.searchsorted(bounds, tf.reshape(tf.math.floormod(
        offset + tf.cast(step, tf.float64) * GOLDEN, 1.0), [1]), side="right", out_type=tf.int64)[0]
  else:
    raise ValueError(f"data.task_order {order!r}: use random or stratified")
  return tf.data.Dataset.range(2**62).map(pick)


def task_sequence(rates: np.ndarray, seed: int, order: str, steps: int) -> np.ndarray:
  """The first `steps` task indices of task_choices, as an array."""
  return np.fromiter(task_choices(rates, seed, order).take(steps).as_numpy_iterator(), np.int64)


def make_mixture(tasks: list[seqio.Task], rates: np.ndarray, *, host_batch_size: int, seed: int,
                 shard_index: int, num_shards: int, shuffle_buffer: int, query_length: int,
                 document_length: int, num_negatives: int, pad_id: int,
                 length_buckets: tuple[int, ...] = (), length_groups: int = 1,
                 teacher_dim: int = 0, task_order: str = "random"):
  """Endless stream of host batches, each global batch from one task (each row group of a
  grouped batch carries the task's index).

  Examples are shuffled here, after preprocessing, with a seeded buffer (what SeqIO's own
  `shuffle=True` does). Asking SeqIO to shuffle would also make it warn that an uncached
  FunctionDataSource shuffles poorly on restarts; that does not apply: every source gives its
  rows in one fixed order and every host's iterator position is checkpointed, so a restart
  continues the same stream.
  """
  per_task = []
  for i, task in enumerate(tasks):
    ds = task.get_dataset(
        sequence_length=None, split="train", shuffle=False, num_epochs=None,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        seed=seed + 1000 * i, use_cached=bool(task.cached_dir), trim_output_features=False)
    # The stream repeats before the shuffle, so one seeded order runs on forever; every iterator
    # of this dataset starts it alike (a resume may build several before one restores).
    ds = ds.shuffle(shuffle_buffer, seed=seed + 1000 * i, reshuffle_each_iteration=False)
    per_task.append(batch_task(ds, batch_size=host_batch_size, query_length=query_length,
                               document_length=document_length, num_negatives=num_negatives,
                               pad_id=pad_id, length_buckets=length_buckets,
                               length_groups=length_groups, teacher_dim=teacher_dim))
  ds = tf.data.Dataset.choose_from_datasets(per_task, task_choices(rates, seed, task_order),
                                            stop_on_empty_dataset=True)
  ds = tf.data.Dataset.zip((task_choices(rates, seed, task_order), ds)).map(
      lambda task_index, batch: (tuple(dict(g, task_index=task_index) for g in batch)
                                 if isinstance(batch, tuple) else dict(batch, task_index=task_index)))
  options = tf.data.Options()
  # The tokenizer runs in tf.py_function; it is stateless, so the iterator checkpoint is exact.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  options.deterministic = True
  return ds.with_options(options).prefetch(2)


def next_batch(iterator) -> dict | tuple[dict, ...]:
  """The next host batch as NumPy arrays; a record or TFDS row the pipeline refuses (an empty
  text) is an InputError naming its task, file and record."""
  try:
    return tf.nest.map_structure(lambda v: v.numpy(), next(iterator))
  except tf.errors.InvalidArgumentError as e:
    if refused_row(e) is None:
      raise
    raise InputError(refused_row(e)) from None


def task_specs(config) -> list[TaskSpec]:
  """The TaskSpecs of a training config's `data.tasks` (file globs expanded under data.dir)."""
  d = config.data
  if not d.tasks:
    raise ValueError("config.data.tasks is empty: name at least one training dataset")
  return [TaskSpec(name=t.name, files=tuple(f for p in t.files for f in expand_files(os.path.join(d.dir, p))),
                   prompt_task=t.prompt_task, rate=t.rate or None, weight=t.weight,
                   source=t.source, tfds_name=t.tfds_name, tfds_data_dir=t.tfds_data_dir,
                   split=t.split, seed=config.train.seed)
          for t in d.tasks]


def task_options(config) -> dict:
  """register_task's keyword arguments from a config: lengths, prompts, bad-row policy."""
  d = config.data
  return dict(query_length=d.query_length, document_length=d.document_length,
              num_negatives=d.num_negatives, query_prompt=config.prompts.query,
              document_format=config.prompts.document, skip_bad_rows=d.skip_bad_rows,
              task_dropout=config.prompts.task_dropout)


def register_tasks(config, tokenizer_file: str, specs: list[TaskSpec], teacher_store=None,
                   cached: bool = False):
  """One SeqIO task per spec, with the config's task_options; `cached`: each reads its offline
  cache under data.cache_dir (`gembed cache`) instead of its source."""
  if cached and not config.data.cache_dir:
    raise ValueError("data.use_cached needs data.cache_dir (where `gembed cache` wrote the tasks)")
  return [register_task(s, tokenizer_file=tokenizer_file, teacher_store=teacher_store,
                        cache_dir=config.data.cache_dir if cached else "", **task_options(config))
          for s in specs]


def cache_settings(config, tokenizer_file: str, spec: TaskSpec, teacher_store=None) -> dict:
  """What `spec`'s offline cache depends on under `config` (offline_cache.task_settings)."""
  return offline_cache.task_settings(spec, tokenizer_file=tokenizer_file,
                                     teacher_store=teacher_store, **task_options(config))


class TrainingData(NamedTuple):
  specs: list[TaskSpec]
  rates: np.ndarray
  dataset: tf.data.Dataset  # this host's batches
  bad_rows: list[str]  # skipped rows (data.skip_bad_rows) as "file:line: problem"
  pad_id: int


def from_config(config, tokenizer_file: str, process_index: int = 0,
                process_count: int = 1) -> TrainingData:
  """This host's share of a training config's data and prompts (and precomputed teacher
  embeddings, when distill.teacher_embeddings names them)."""
  d, seed = config.data, config.train.seed
  specs = task_specs(config)
  store = None
  if config.distill.teacher_embeddings:
    store = TeacherStore(config.distill.teacher_embeddings)
    store.check_lengths(d.query_length, d.document_length)
  tasks = register_tasks(config, tokenizer_file, specs, store, cached=d.use_cached)
  rates = mixture_rates([t.num_rows for t in tasks], specs, d.mixing, d.mixing_temperature)
  if d.global_batch_size % process_count:
    raise ValueError(f"data.global_batch_size {d.global_batch_size} is not divisible by "
                     f"{process_count} hosts")
  pad_id = tasks[0].output_features["query"].vocabulary.pad_id
  dataset = make_mixture(
      tasks, rates, host_batch_size=d.global_batch_size // process_count, seed=seed,
      shard_index=process_index, num_shards=process_count, shuffle_buffer=d.shuffle_buffer,
      query_length=d.query_length, document_length=d.document_length,
      num_negatives=d.num_negatives, pad_id=pad_id, length_buckets=tuple(d.length_buckets),
      length_groups=d.length_groups, teacher_dim=store.dim if store else 0,
      task_order=d.task_order)
  log.info("mixture: %s", ", ".join(f"{s.name}={r:.3f} ({t.num_rows} rows)"
                                     for s, r, t in zip(specs, rates, tasks)))
  return TrainingData(specs, rates, dataset, [line for t in tasks for line in t.bad_rows], pad_id)


_agreements = itertools.count()  # every host runs the same trainings in the same order


def shared_lengths(pad_id: int, timeout_s: int = 600) -> Callable[[dict, int], dict]:
  """`agree(host_batch, step)`: with data.length_buckets on several hosts, each host has cut its
  batch (each row group of it) to the bucket of its own longest texts; all pad to the longest
  any host cut to at that step, so the global batch has one shape: the bucket one host would
  cut the whole global batch (group) to, so results equal one host's. The bucket depends on
  texts only their host has read, so the hosts swap it: two integers per group and step
  through the coordination service's key-value store, host to host, not a device collective
  that would queue behind the steps already dispatched. One host: the batch as it is."""
  if jax.process_count() == 1:
    return lambda batch, step: batch
  from jax._src import distributed  # the coordination service client jax.distributed started
  client, me = distributed.global_state.client, jax.process_index()
  prefix = f"gembed/lengths/{next(_agreements)}"

  def agree(batch, step: int):
    mine = [n for lengths in batch_schema.text_lengths(batch) for n in lengths]
    client.key_value_set(f"{prefix}/{step}/{me}", " ".join(map(str, mine)))
    client.wait_at_barrier(f"{prefix}/{step}", timeout_s * 1000)
    lengths = np.asarray([v.split() for _, v in client.key_value_dir_get(f"{prefix}/{step}/")], int)
    # Past this step's barrier every host has read the previous step's lengths.
    client.key_value_delete(f"{prefix}/{step - 1}/{me}")
    agreed = lengths.max(axis=0).reshape(-1, 2)
    padded = [batch_schema.pad_lengths(group, *group_lengths, pad_id)
              for group, group_lengths in zip(batch_schema.row_groups(batch), agreed)]
    return batch_schema.from_groups(padded)

  return agree
