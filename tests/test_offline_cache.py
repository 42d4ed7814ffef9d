"""`gembed cache` (an Apache Beam pipeline, DirectRunner) and data.use_cached: the cached
stream is the uncached one, batch for batch, on one host and on each of two; it resumes
exactly; a cache made with other settings is refused naming the setting."""

import json

import numpy as np
import pytest
import tensorflow as tf

from configs import common
from gembed.data import mixture

pytest.importorskip("apache_beam")
from gembed.tools.cache import write_cache  # noqa: E402  (needs the beam extra)


def _rows(prefix, n, negatives=True):
  return [json.dumps({"query": f"{prefix} question {i} " + "word " * (i % 9),
                      "positive": f"{prefix} answer {i % 13}", "title": "T" * (i % 2),
                      **({"negative": f"{prefix} wrong {i}"} if negatives and i % 3 else {})})
          for i in range(n)]


def _config(tmp_path, minilm_dir):
  for name, lines in {"a1": _rows("a1", 37)[:20] + ['{"query": "cut'] + _rows("a1", 37)[20:],
                      "a2": _rows("a2", 23), "b": _rows("b", 31, negatives=False)}.items():
    (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
  c = common.get_base_config()
  c.model.init = minilm_dir
  c.data.dir = str(tmp_path)
  c.data.tasks = [common.task("a", ["a*.jsonl"], "search result"),
                  common.task("b", ["b.jsonl"], "duplicates")]
  c.data.num_negatives, c.data.skip_bad_rows = 1, True
  c.data.global_batch_size, c.data.shuffle_buffer = 8, 16
  c.data.query_length, c.data.document_length = 12, 16
  c.data.cache_dir = str(tmp_path / "cache")
  c.prompts.task_dropout = 0.3
  return c


def _stream(config, tokenizer_file, cached, index=0, count=1):
  config = config.copy_and_resolve_references()
  config.data.use_cached = cached
  config.data.global_batch_size = 8 * count
  return mixture.from_config(config, tokenizer_file, index, count)


def _assert_same(batches, other):
  for x, y in zip(batches, other, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_cached_stream_is_the_uncached_one_and_resumes_exactly(tmp_path, minilm_dir, minilm):
  tokenizer_file = minilm[0].tokenizer_file
  config = _config(tmp_path, minilm_dir)
  summary = write_cache(config)
  assert summary["cached"] == {"a": 60, "b": 31} and summary["skipped"] == []
  assert write_cache(config)["skipped"] == ["a", "b"]  # a rerun writes nothing

  for index, count in ((0, 1), (0, 2), (1, 2)):  # task a: a file per host; b: every 2nd row
    uncached = _stream(config, tokenizer_file, False, index, count)
    cached = _stream(config, tokenizer_file, True, index, count)
    assert cached.bad_rows == uncached.bad_rows and "a1.jsonl:21" in cached.bad_rows[0]
    np.testing.assert_array_equal(cached.rates, uncached.rates)
    expected = [mixture.next_batch(it) for it in [iter(uncached.dataset)] for _ in range(30)]
    _assert_same(expected, [mixture.next_batch(it) for it in [iter(cached.dataset)] for _ in range(30)])

  it = iter(_stream(config, tokenizer_file, True).dataset)
  for _ in range(7):
    next(it)
  saved = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it" / "ckpt"))
  expected = [mixture.next_batch(it) for _ in range(12)]
  resumed = iter(_stream(config, tokenizer_file, True).dataset)
  tf.train.Checkpoint(iterator=resumed).read(saved).assert_consumed()
  _assert_same(expected, [mixture.next_batch(resumed) for _ in range(12)])


def test_cache_made_with_other_settings_is_refused(tmp_path, minilm_dir, minilm):
  config = _config(tmp_path, minilm_dir)
  with pytest.raises(FileNotFoundError, match="no complete cache"):
    _stream(config, minilm[0].tokenizer_file, True)
  config.data.tasks = config.data.tasks[1:]
  write_cache(config)
  config.data.query_length = 20
  with pytest.raises(ValueError, match="data.query_length = 12, this config has 20"):
    _stream(config, minilm[0].tokenizer_file, True)
  assert write_cache(config)["cached"] == {"b": 31}  # rewritten for the new settings


def test_examples_serialise_as_seqio_does():
  import seqio

  from gembed.data.offline_cache import tf_example
  example = {"ids": np.array([101, 7, 102], np.int32), "length": np.int32(3), "valid": np.bool_(True),
             "teacher": np.array([0.5, -1.25], np.float32)}
  assert tf_example(example) == seqio.dict_to_tfexample(example).SerializeToString()
