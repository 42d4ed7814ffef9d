"""prompts.task_dropout: a seeded share of training queries gets an empty task string."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from gembed.data import mixture, preprocessors, sources, tasks

PROMPT, DOC = "task: {task} | query: {text}", "title: {title} | text: {text}"


def _formatted(task_dropout, seed, n=400):
  rows = {"query": [f"question {i}" for i in range(n)], "positive": [f"answer {i}" for i in range(n)],
          "title": [""] * n}
  ds = preprocessors.apply_prompts(tf.data.Dataset.from_tensor_slices(rows), query_prompt=PROMPT,
                                   document_format=DOC, prompt_task="search result", num_negatives=0,
                                   task_dropout=task_dropout, dropout_seed=seed)
  return [(ex["query_text"].numpy().decode(), ex["positive_text"].numpy().decode()) for ex in ds]


def test_share_of_dropped_tasks_is_seeded():
  out = _formatted(0.3, seed=0)
  dropped = {i for i, (q, _) in enumerate(out) if q == f"task:  | query: question {i}"}
  kept = {i for i, (q, _) in enumerate(out) if q == f"task: search result | query: question {i}"}
  assert dropped | kept == set(range(400)) and not dropped & kept
  assert abs(len(dropped) / 400 - 0.3) < 0.1  # binomial sd 0.023
  assert all(p == f"title: none | text: answer {i}" for i, (_, p) in enumerate(out))  # documents as is
  again = _formatted(0.3, seed=0)
  other = _formatted(0.3, seed=1)
  assert again == out
  assert {i for i, (q, _) in enumerate(other) if q.startswith("task:  |")} != dropped
  assert all(q.startswith("task: search result") for q, _ in _formatted(0.0, seed=0))
  with pytest.raises(ValueError, match="task_dropout 1.5"):
    _formatted(1.5, seed=0)


def test_dropout_reaches_tokenized_batches(tmp_path, minilm_dir):
  from gembed.tokenizer import Tokenizer

  path = tmp_path / "rows.jsonl"
  path.write_text("".join(json.dumps({"query": f"question {i}", "positive": f"answer {i}"}) + "\n"
                          for i in range(32)))
  tokenizer_file = os.path.join(minilm_dir, "tokenizer.json")
  task = tasks.register_task(sources.TaskSpec("dropout", (str(path),)),
                             tokenizer_file=tokenizer_file, query_length=16, document_length=16,
                             num_negatives=0, query_prompt=PROMPT, document_format=DOC,
                             task_dropout=0.5)
  ds = mixture.make_mixture([task], np.ones(1), host_batch_size=32, seed=0, shard_index=0,
                            num_shards=1, shuffle_buffer=32, query_length=16, document_length=16,
                            num_negatives=0, pad_id=0)
  batch = next(iter(ds))
  tok = Tokenizer(tokenizer_file, 16)
  queries = [tok.decode(ids[m > 0].tolist()) for ids, m in zip(batch["query_ids"].numpy(),
                                                                  batch["query_mask"].numpy())]
  empty = sum(q.startswith("[CLS] task : | query : question") for q in queries)
  full = sum(q.startswith("[CLS] task : search result | query : question") for q in queries)
  assert empty + full == 32 and 0 < empty < 32
