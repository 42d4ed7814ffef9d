"""`gembed cache`: a training config's tasks written once through all their preprocessors
(prompts, keys, token ids) into the offline cache (gembed.data.offline_cache), as an Apache
Beam pipeline with one element per source file, so the work spreads over the runner's workers
(DirectRunner here; Dataflow, Flink or Spark by `--runner`; the workers must reach the data, the
tokenizer and data.cache_dir). Train from it with `--config.data.use_cached=True`. A task whose
cache is complete and made with the same settings is skipped, so a rerun after a failure writes
only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from gembed.data import mixture, offline_cache
from gembed.data.sources import TaskSpec
from gembed.formats import modeldir

log = logging.getLogger(__name__)

FILE_SOURCES = ("jsonl", "tfrecord", "arrayrecord")  # cached a file per shard; others whole


def shard_specs(spec: TaskSpec) -> list[TaskSpec]:
  """The parts of a task cached as its shards, in order: one per source file, or the whole task
  (TFDS; labelled files, which pair rows across files)."""
  if spec.source not in FILE_SOURCES:
    return [spec]
  return [dataclasses.replace(spec, name=f"{spec.name}_shard{i}", files=(f,))
          for i, f in enumerate(spec.files)]


class _WriteShard(beam.DoFn):
  """(task, shard index, shard spec) -> that shard's file, and (count, features, bad rows)."""

  def __init__(self, config, tokenizer_file: str):
    self._config, self._tokenizer_file = config, tokenizer_file

  def setup(self):
    self._store = None
    if self._config.distill.teacher_embeddings:
      from gembed.data.teacher_store import TeacherStore
      self._store = TeacherStore(self._config.distill.teacher_embeddings)

  def process(self, element):
    name, index, num_shards, spec = element
    task, = mixture.register_tasks(self._config, self._tokenizer_file, [spec], self._store)
    directory = offline_cache.task_dir(self._config.data.cache_dir, name)
    count, features = offline_cache.write_shard(task, directory, index, num_shards)
    log.info("%s: shard %d of %d, %d examples", name, index + 1, num_shards, count)
    yield name, (index, count, features, task.bad_rows)


def _finish(settings: dict, cache_dir: str):
  def finish(name_and_shards):
    name, shards = name_and_shards
    shards = sorted(shards, key=lambda shard: shard[0])
    offline_cache.finish(offline_cache.task_dir(cache_dir, name), len(shards),
                         [(count, features) for _, count, features, _ in shards], settings[name],
                         [line for *_, bad_rows in shards for line in bad_rows])
  return finish


def write_cache(config, runner: str = "DirectRunner", beam_options: str = "") -> dict:
  """Caches every task of `config` not already cached with its settings under data.cache_dir;
  returns {task: examples}, the tasks skipped and the wall time."""
  cache_dir = config.data.cache_dir
  if not cache_dir:
    raise ValueError("gembed cache: set data.cache_dir (where the cache is written)")
  start = time.perf_counter()
  info, _ = modeldir.load_model(modeldir.resolve_model_arg(config.model.init))
  store = None
  if config.distill.teacher_embeddings:
    from gembed.data.teacher_store import TeacherStore
    store = TeacherStore(config.distill.teacher_embeddings)
  specs = mixture.task_specs(config)
  settings = {s.name: mixture.cache_settings(config, info.tokenizer_file, s, store) for s in specs}
  todo = []
  for spec in specs:
    directory = offline_cache.task_dir(cache_dir, spec.name)
    if offline_cache.is_current(directory, settings[spec.name]):
      log.info("%s: cached at %s with these settings; skipped", spec.name, directory)
      continue
    if tf.io.gfile.exists(directory):
      log.warning("%s: rewriting %s (incomplete, or written with other settings)", spec.name,
                  directory)
      tf.io.gfile.rmtree(directory)
    tf.io.gfile.makedirs(directory)
    todo.append(spec)
  shards = [(spec.name, i, len(shard_specs(spec)), part)
            for spec in todo for i, part in enumerate(shard_specs(spec))]
  if shards:
    options = PipelineOptions(["--runner", runner, *shlex.split(beam_options)])
    with beam.Pipeline(options=options) as pipeline:
      _ = (pipeline | beam.Create(shards) | beam.Reshuffle()
           | beam.ParDo(_WriteShard(config, info.tokenizer_file)) | beam.GroupByKey()
           | beam.Map(_finish(settings, cache_dir)))
  examples = {spec.name: offline_cache.read_cached(offline_cache.task_dir(cache_dir, spec.name),
                                                   settings[spec.name])[0] for spec in todo}
  return {"cached": examples, "skipped": [s.name for s in specs if s not in todo],
          "seconds": round(time.perf_counter() - start, 1)}
