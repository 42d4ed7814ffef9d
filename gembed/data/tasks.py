"""One SeqIO task per training dataset: its source, the model's vocabulary for every text
feature, and the preprocessors (gembed.data.preprocessors).
"""

from __future__ import annotations

import functools
import logging

import seqio
import tensorflow as tf

from gembed.data import preprocessors
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


def register_task(spec: TaskSpec, *, tokenizer_file: str, query_length: int, document_length: int,
                  num_negatives: int, query_prompt: str, document_format: str,
                  skip_bad_rows: bool = False, task_dropout: float = 0.0,
                  teacher_store=None) -> seqio.Task:
  """Registers (or re-registers) `spec` as a SeqIO task and returns it. With a `teacher_store`
  (gembed.data.teacher_store), every example also carries its texts' teacher embeddings."""
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
                        num_negatives=num_negatives, task_dropout=task_dropout, seed=spec.seed),
      *([functools.partial(preprocessors.teacher_embeddings, store=teacher_store,
                           num_negatives=num_negatives)] if teacher_store else []),
      preprocessors.identity_keys,
      functools.partial(preprocessors.tokenize_formatted, rename=rename,
                        output_features=output_features),
      functools.partial(preprocessors.select_model_inputs, num_negatives=num_negatives),
  ]
  name = f"gembed.{spec.name}"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  task = seqio.Task(name, HostShareSource(dataset_fn, splits=["train"],
                                          num_input_examples={"train": num_rows}),
                    output_features=output_features, preprocessors=steps)
  seqio.TaskRegistry.add_provider(name, task)
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
