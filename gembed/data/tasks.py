"""One SeqIO task per training dataset: its source, the model's vocabulary for every text
feature, and the preprocessors (gembed.data.preprocessors), all before SeqIO's cache
placeholder: `gembed cache` writes their output offline (gembed.data.offline_cache), and with
data.use_cached the task reads it instead of running them.
"""

from __future__ import annotations

import functools
import logging

import seqio
import tensorflow as tf

from gembed.data import offline_cache, preprocessors
from gembed.data.sources import TaskSpec, task_source
from gembed.data.vocabulary import HfTokenizerVocabulary

log = logging.getLogger(__name__)


class HostShareSource(seqio.FunctionDataSource):
  """A FunctionDataSource whose function reads one host's share itself (sources.host_share):
  SeqIO would otherwise have every host read every row and keep every n-th."""

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed, shard_info=shard_info)


class CachedTask(seqio.Task):
  """A task that, asked for `use_cached=True`, reads `gembed cache`'s files of it in order: file
  after file, host i of n taking files i::n (every n-th example when there are fewer files than
  hosts), as the uncached source is read, so both give the same examples in the same order."""

  cached_dir: str = ""  # the task's directory under data.cache_dir; "" when not cached

  @property
  def cache_dir(self) -> str | None:
    return self.cached_dir or super().cache_dir

  def _get_cached_source(self, split, file_shuffle_buffer_size=None):
    del file_shuffle_buffer_size  # the mixture shuffles examples; files stay in order
    # SeqIO's reader of its cache format; it interleaves 16 files unless told one at a time.
    return seqio.dataset_providers._CachedDataSource(self.cache_dir, split, cycle_length=1,  # pylint: disable=protected-access
                                                     block_length=1)


def register_task(spec: TaskSpec, *, tokenizer_file: str, query_length: int, document_length: int,
                  num_negatives: int, query_prompt: str, document_format: str,
                  skip_bad_rows: bool = False, task_dropout: float = 0.0,
                  teacher_store=None, cache_dir: str = "") -> seqio.Task:
  """Registers (or re-registers) `spec` as a SeqIO task and returns it. With a `teacher_store`
  (gembed.data.teacher_store), every example also carries its texts' teacher embeddings. With a
  `cache_dir` (data.use_cached), the task reads what `gembed cache` wrote there for these same
  settings (refused otherwise) and never reads its source."""
  if cache_dir:
    cached_dir = offline_cache.task_dir(cache_dir, spec.name)
    settings = offline_cache.task_settings(
        spec, tokenizer_file=tokenizer_file, query_length=query_length,
        document_length=document_length, num_negatives=num_negatives, query_prompt=query_prompt,
        document_format=document_format, skip_bad_rows=skip_bad_rows, task_dropout=task_dropout,
        teacher_store=teacher_store)
    num_rows, bad_rows = offline_cache.read_cached(cached_dir, settings)
    log.info("task %s: %d rows from the cache %s", spec.name, num_rows, cached_dir)

    def make_dataset(*unused):
      raise ValueError(f"task {spec.name} reads its cache ({cached_dir}), not its source")
  else:
    cached_dir = ""
    make_dataset, num_rows, bad_rows = task_source(spec, num_negatives, skip_bad_rows)
    log.info("task %s: %d rows from %s (%d bad rows skipped)", spec.name, num_rows,
             ", ".join(spec.files) or spec.tfds_name, len(bad_rows))

  def dataset_fn(split, shuffle_files, seed=None, shard_info=None):
    del split, shuffle_files, seed  # one split; examples are shuffled by the mixture
    return make_dataset(*((shard_info.index, shard_info.num_shards) if shard_info else ()))

  query_vocab = HfTokenizerVocabulary(tokenizer_file, query_length)
  doc_vocab = HfTokenizerVocabulary(tokenizer_file, document_length)
  output_features = {
      name: seqio.Feature(query_vocab if name == "query" else doc_vocab, add_eos=False,
                          dtype=tf.int32)
      for name in preprocessors.text_features(num_negatives)
  }
  rename = {f"{name}": f"{name}_text" for name in preprocessors.text_features(num_negatives)}
  steps = [
      functools.partial(preprocessors.apply_prompts, query_prompt=query_prompt,
                        document_format=document_format, prompt_task=spec.prompt_task,
                        num_negatives=num_negatives, task_dropout=task_dropout,
                        dropout_seed=spec.seed),
      *([functools.partial(preprocessors.teacher_embeddings, store=teacher_store,
                           num_negatives=num_negatives)] if teacher_store else []),
      preprocessors.identity_keys,
      functools.partial(preprocessors.tokenize_formatted, rename=rename,
                        output_features=output_features),
      functools.partial(preprocessors.select_model_inputs, num_negatives=num_negatives),
      seqio.CacheDatasetPlaceholder(),  # everything above is what `gembed cache` writes
  ]
  name = f"gembed.{spec.name}"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  task = CachedTask(name, HostShareSource(dataset_fn, splits=["train"],
                                          num_input_examples={"train": num_rows}),
                    output_features=output_features, preprocessors=steps)
  seqio.TaskRegistry.add_provider(name, task)
  task.cached_dir = cached_dir
  task.num_rows = num_rows
  task.bad_rows = bad_rows
  return task


def formatted_texts(task: seqio.Task, num_negatives: int) -> tuple[set[bytes], set[bytes]]:
  """(queries, documents): every text of a registered task's rows as the student sees it, its
  source through the prompt step alone (what `gembed teacher-embed` embeds). A missing hard
  negative is no text."""
  ds = task.preprocessors[0](task.source.get_dataset(split="train", shuffle=False))
  queries, documents = set(), set()
  for ex in ds.as_numpy_iterator():
    queries.add(ex["query_text"])
    documents.add(ex["positive_text"])
    documents.update(ex[f"negative_{k}_text"] for k in range(num_negatives)
                     if ex[f"negative_{k}_valid"])
  return queries, documents
