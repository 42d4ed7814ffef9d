"""`gembed bench data`: texts/s of the SeqIO pipeline (tokenisation + batching), and of
tokenisation alone, in-graph (gembed/data/ingraph.py) beside the tf.py_function path, each
with a batch of texts per call (the pipeline's way) and one text per call (the way before)."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np


def run(args) -> dict:
  """Tokenisation + batching throughput of the SeqIO pipeline, in texts/s."""
  from gembed.data import mixture, sources, tasks
  from gembed.formats import modeldir

  info, _ = modeldir.load_model(modeldir.default_model_dir())
  spec = sources.TaskSpec("bench", (os.path.abspath(args.triples),))
  task = tasks.register_task(spec, tokenizer_file=info.tokenizer_file,
                             query_length=args.max_length, document_length=args.max_length,
                             num_negatives=1, query_prompt="task: {task} | query: {text}",
                             document_format="title: {title} | text: {text}")
  ds = mixture.make_mixture([task], np.ones(1), host_batch_size=args.batch_size, seed=0,
                            shard_index=0, num_shards=1, shuffle_buffer=1000,
                            query_length=args.max_length, document_length=args.max_length,
                            num_negatives=1, pad_id=0)
  it = iter(ds)
  for _ in range(3):
    next(it)
  rates = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.batches):
      next(it)
    rates.append(args.batches * args.batch_size * 3 / (time.perf_counter() - start))
  texts = _texts(args.triples, args.batches * args.batch_size)
  vocab = task.output_features["query"].vocabulary
  cores = len(os.sched_getaffinity(0))
  tokenize = {"texts": len(texts), "cores": cores}
  paths = (("in_graph", vocab.encode_batch_tf, True),
           ("py_function", vocab.py_function_encode_batch_tf, True),
           ("in_graph_per_text", vocab.encode_tf, False),
           ("py_function_per_text", vocab.py_function_encode_tf, False))
  for name, encode, batched in paths:
    tokenize[f"{name}_texts_per_s"] = _tokenize_rate(encode, texts, args.repeats, batched)
    tokenize[f"{name}_texts_per_s_per_core"] = tokenize[f"{name}_texts_per_s"] / cores
  # The pipeline's in-graph path against the py_function path as it was (a text per call), and
  # against py_function given the same batches (Rust tokenises a batch on its own threads).
  tokenize["ratio"] = tokenize["in_graph_texts_per_s"] / tokenize["py_function_per_text_texts_per_s"]
  tokenize["ratio_same_batches"] = (tokenize["in_graph_texts_per_s"]
                                    / tokenize["py_function_texts_per_s"])
  return {"batch_size": args.batch_size, "texts_per_batch": 3 * args.batch_size,
          "max_length": args.max_length, "texts_per_s": statistics.median(rates),
          "batches_per_s": statistics.median(rates) / (3 * args.batch_size),
          "tokenize": tokenize}


def _texts(path: str, n: int) -> list[str]:
  """The query, positive and negative of the first n rows: the pipeline's texts."""
  from gembed.tools.bench.common import read_rows
  return [row[k] for row in read_rows(path, n) for k in ("query", "positive", "negative")
          if isinstance(row.get(k), str)]


def _tokenize_rate(encode, texts: list[str], repeats: int, batched: bool) -> float:
  """texts/s of `encode` mapped over `texts` (batches of TEXTS_PER_TOKENIZE, or one text per
  call) on all of tf.data's threads (median of repeats)."""
  import tensorflow as tf

  from gembed.data.preprocessors import TEXTS_PER_TOKENIZE

  ds = tf.data.Dataset.from_tensor_slices(texts)
  if batched:
    ds = ds.batch(TEXTS_PER_TOKENIZE).map(encode, num_parallel_calls=tf.data.AUTOTUNE)
  else:  # batched after the map: time the map, not one Python round trip per text
    ds = ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).ragged_batch(TEXTS_PER_TOKENIZE)
  ds = ds.prefetch(1)
  for _ in ds.take(1):
    pass
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in ds:
      pass
    rates.append(len(texts) / (time.perf_counter() - start))
  return statistics.median(rates)
