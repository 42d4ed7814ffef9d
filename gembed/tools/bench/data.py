"""`gembed bench data`: texts/s of the SeqIO pipeline (tokenisation + batching)."""

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
  return {"batch_size": args.batch_size, "texts_per_batch": 3 * args.batch_size,
          "max_length": args.max_length, "texts_per_s": statistics.median(rates),
          "batches_per_s": statistics.median(rates) / (3 * args.batch_size)}
