"""SeqIO tasks and the one-task-per-step mixture."""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf

from gembed import batch as batch_schema
from gembed.data import mixture, sources, tasks
from gembed.data.rows import read_jsonl_rows
from gembed.textio import InputError
from gembed.tokenizer import Tokenizer

PROMPT, DOC = "task: {task} | query: {text}", "title: {title} | text: {text}"


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def _task_files(tmp_path):
  a = [{"query": f"alpha question {i}", "positive": f"alpha answer {i % 7}", "negative": f"wrong {i}"}
       for i in range(40)]
  b = [{"query": f"beta question {i}", "positive": f"beta answer {i}", "title": "Beta"} for i in range(30)]
  c = [{"query": f"gamma {i}", "positive": f"gamma doc {i}"} for i in range(20)]
  return [_write(tmp_path / "a.jsonl", a), _write(tmp_path / "b.jsonl", b), _write(tmp_path / "c.jsonl", c)]


def _mixture(tmp_path, minilm, seed=0, rates=(0.5, 0.3, 0.2), batch=4, length_buckets=(),
             length_groups=1, files=None, task_order="random"):
  info, _ = minilm
  files = files or _task_files(tmp_path)
  specs = [sources.TaskSpec(f"t{i}", (f,), prompt_task="search result", rate=r)
           for i, (f, r) in enumerate(zip(files, rates))]
  registered = [tasks.register_task(s, tokenizer_file=info.tokenizer_file, query_length=16,
                                    document_length=24, num_negatives=1, query_prompt=PROMPT,
                                    document_format=DOC) for s in specs]
  rates = mixture.mixture_rates([t.num_rows for t in registered], specs, "explicit")
  ds = mixture.make_mixture(registered, rates, host_batch_size=batch, seed=seed, shard_index=0,
                            num_shards=1, shuffle_buffer=64, query_length=16, document_length=24,
                            num_negatives=1, pad_id=0, length_buckets=length_buckets,
                            length_groups=length_groups, task_order=task_order)
  return info, ds


def _decode_batch(tokenizer, batch):
  return [tokenizer.decode(ids[mask > 0].tolist())
          for ids, mask in zip(batch["query_ids"].numpy(), batch["query_mask"].numpy())]


@pytest.mark.parametrize("task_order", ["random", "stratified"])
def test_every_batch_is_one_task_and_rates_hold(tmp_path, minilm, task_order):
  info, ds = _mixture(tmp_path, minilm, task_order=task_order)
  tok = Tokenizer(info.tokenizer_file, 16)
  counts = collections.Counter()
  for batch in ds.take(400):
    queries = _decode_batch(tok, batch)
    prefixes = {q.split("query : ")[1].split()[0] for q in queries}
    assert len(prefixes) == 1, queries  # one task per batch
    expected = ["alpha", "beta", "gamma"][int(batch["task_index"])]
    assert prefixes == {expected}
    counts[expected] += 1
  for name, rate in zip(["alpha", "beta", "gamma"], [0.5, 0.3, 0.2]):
    # binomial standard deviation at n=400 is <= 0.025; allow 4 sigma
    assert abs(counts[name] / 400 - rate) < 0.1, counts


def test_prompts_masks_and_keys(tmp_path, minilm):
  info, ds = _mixture(tmp_path, minilm, rates=(1.0, 1e-9, 1e-9), batch=8)
  tok = Tokenizer(info.tokenizer_file, 24)
  batch = next(iter(ds))
  query = _decode_batch(tok, batch)[0]
  assert query.startswith("[CLS] task : search result | query : alpha question")
  positive_ids = batch["positive_ids"].numpy()[0][batch["positive_mask"].numpy()[0] > 0]
  assert tok.decode(positive_ids.tolist()).startswith("[CLS] title : none | text : alpha answer")
  assert batch["query_ids"].shape == (8, 16) and batch["negative_ids"].shape == (8, 1, 24)
  # Explicit masks: length = real tokens, never inferred from the pad id.
  ids, mask = batch["query_ids"].numpy(), batch["query_mask"].numpy()
  assert all(ids[i, mask[i].sum() - 1] == 102 for i in range(8))  # [SEP] is the last real token
  # Equal positives (answers repeat every 7 rows) carry equal keys, different ones differ.
  texts = [tok.decode(r[m > 0].tolist()) for r, m in zip(batch["positive_ids"].numpy(),
                                                         batch["positive_mask"].numpy())]
  keys = batch["positive_key"].numpy()
  for i in range(8):
    for j in range(8):
      assert (texts[i] == texts[j]) == (keys[i] == keys[j])


def test_length_buckets_cut_only_padding(tmp_path, minilm):
  """A batch cut to its bucket, padded back (what hosts agreeing on a longer bucket do), is the
  static-length batch."""
  _, static = _mixture(tmp_path, minilm)
  _, cut = _mixture(tmp_path, minilm, length_buckets=(8, 12, 16, 24))
  lengths = set()
  for full, short in zip(static.take(12).as_numpy_iterator(), cut.take(12).as_numpy_iterator()):
    lengths.add((short["query_ids"].shape[1], short["positive_ids"].shape[1]))
    assert short["query_mask"].sum(1).max() <= short["query_ids"].shape[1]
    padded = batch_schema.pad_lengths(short, 16, 24, pad_id=0)
    assert padded.keys() == full.keys()
    for name in full:
      np.testing.assert_array_equal(padded[name], full[name], err_msg=name)
  assert all(q < 16 and d < 24 for q, d in lengths), lengths  # every batch was cut
  with pytest.raises(ValueError, match="query_ids has 16 tokens, more than the 8"):
    batch_schema.pad_lengths(full, 8, 24, pad_id=0)


def test_length_groups_sort_rows_and_cut_each_group(tmp_path, minilm):
  """data.length_groups: a batch's rows sorted by their longest text into groups, each cut to the
  bucket of its own longest texts; padded back and laid side by side, they are the static batch
  in that order."""
  rows = [{"query": "question " + "word " * (i % 11), "positive": "answer" + " more" * (i % 5),
           "negative": f"wrong {i}"} for i in range(48)]
  files = [_write(tmp_path / "varied.jsonl", rows)]
  buckets = (8, 12, 16, 24)
  _, static = _mixture(tmp_path, minilm, rates=(1.0,), batch=8, files=files)
  _, grouped = _mixture(tmp_path, minilm, rates=(1.0,), batch=8, files=files,
                        length_buckets=buckets, length_groups=2)
  shapes = set()
  for full, groups in zip(static.take(6).as_numpy_iterator(), grouped.take(6).as_numpy_iterator()):
    assert isinstance(groups, tuple) and len(groups) == 2
    longest = np.max([full["query_mask"].sum(1), full["positive_mask"].sum(1),
                      full["negative_mask"].sum(-1).max(1)], axis=0)
    order = np.argsort(longest, kind="stable")
    for group in groups:
      documents = max(group["positive_mask"].sum(1).max(), group["negative_mask"].sum(-1).max())
      assert group["query_ids"].shape[1] == min(b for b in buckets if b >= group["query_mask"].sum(1).max())
      assert group["positive_ids"].shape[1] == group["negative_ids"].shape[2] == min(
          b for b in buckets if b >= documents)
    shapes.add(tuple(batch_schema.text_lengths(groups)))
    padded = [batch_schema.pad_lengths(g, 16, 24, pad_id=0) for g in groups]
    task = full.pop("task_index")
    assert all(p.pop("task_index") == task for p in padded)  # every group: the step's task
    for name in full:
      np.testing.assert_array_equal(np.concatenate([p[name] for p in padded]), full[name][order],
                                    err_msg=name)
  assert any(a != b for a, b in shapes), shapes  # the groups were cut to different lengths
  with pytest.raises(ValueError, match="length_groups 2 needs data.length_buckets"):
    _mixture(tmp_path, minilm, rates=(1.0,), batch=8, files=files, length_groups=2)


def test_stratified_order_follows_the_rates_in_every_window():
  rates = np.array([0.3, 0.2, 0.15] + [0.35 / 5] * 5)  # 8 tasks, five at 7%
  n = 60
  worst = {}
  for order in ("random", "stratified"):
    worst[order] = 0.0
    for seed in range(8):
      tasks = mixture.task_sequence(rates, seed, order, 400)
      assert tasks.min() >= 0 and tasks.max() < len(rates)
      for start in range(0, 400 - n, 20):
        counts = np.bincount(tasks[start:start + n], minlength=len(rates))
        worst[order] = max(worst[order], np.abs(counts - n * rates).max())
  assert worst["stratified"] <= 2.0, worst  # a low-discrepancy sequence: within about one step
  assert worst["random"] > 5.0, worst  # what it fixes: a draw per step misses by several steps
  a, b = mixture.task_sequence(rates, 1, "stratified", 50), mixture.task_sequence(rates, 2, "stratified", 50)
  assert not np.array_equal(a, b)  # the seed moves the order
  with pytest.raises(ValueError, match="task_order 'sorted'"):
    mixture.task_choices(rates, 0, "sorted")


@pytest.mark.parametrize("task_order", ["random", "stratified"])
def test_same_seed_same_stream_and_exact_restore(tmp_path, minilm, task_order):
  _, ds1 = _mixture(tmp_path, minilm, seed=3, task_order=task_order)
  _, ds2 = _mixture(tmp_path, minilm, seed=3, task_order=task_order)
  it1, it2 = iter(ds1), iter(ds2)
  for _ in range(5):
    a, b = next(it1), next(it2)
    np.testing.assert_array_equal(a["query_ids"], b["query_ids"])
  checkpoint = tf.train.Checkpoint(iterator=it1)
  path = checkpoint.write(str(tmp_path / "it" / "ckpt"))
  expected = [next(it1) for _ in range(6)]
  _, ds3 = _mixture(tmp_path, minilm, seed=3, task_order=task_order)
  it3 = iter(ds3)
  tf.train.Checkpoint(iterator=it3).read(path).assert_consumed()
  for want in expected:
    got = next(it3)
    assert int(got["task_index"]) == int(want["task_index"])
    np.testing.assert_array_equal(got["query_ids"], want["query_ids"])
    np.testing.assert_array_equal(got["negative_ids"], want["negative_ids"])
  _, other = _mixture(tmp_path, minilm, seed=4, task_order=task_order)
  assert any(not np.array_equal(next(iter(other))["query_ids"], e["query_ids"]) for e in expected[:1])


def test_bad_rows_error_or_skipped_and_named(tmp_path):
  path = _write(tmp_path / "bad.jsonl", [{"query": "q", "positive": "p"}, {"query": "q2"},
                                         '{"query": "x", "positive": "y"', {"query": "q3", "positive": 7.5},
                                         {"query": "q4", "positive": "p4", "negatives": ["n", ""]},
                                         '["a list"]', {"query": "q5", "positive": ""}])
  with open(path, "ab") as f:
    f.write(b'{"query": "caf\xe9", "positive": "p"}\n' + b'{"query": "q6", "positive": "p6"}\n')
  with pytest.raises(InputError, match=r"bad.jsonl:2: missing field 'positive'"):
    read_jsonl_rows([path], num_negatives=1)
  cut = _write(tmp_path / "cut.jsonl", [{"query": "q", "positive": "p"}, '{"query": "x"'])
  with pytest.raises(InputError, match=r"cut.jsonl:2: invalid JSON"):
    read_jsonl_rows([cut], num_negatives=1)
  rows = read_jsonl_rows([path], num_negatives=2, skip_bad_rows=True)
  assert rows.query.tolist() == ["q", "q6"]
  problems = [line.split(": ", 1)[1] for line in rows.bad_rows]
  assert [line.split(": ", 1)[0] for line in rows.bad_rows] == \
      [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 8)]
  assert problems[0] == "missing field 'positive'" and problems[1].startswith("invalid JSON")
  assert "must be a string" in problems[2] and "negatives" in problems[3]
  assert problems[4] == "expected a JSON object, got list" and problems[5] == "field 'positive' is empty"
  assert problems[6].startswith("invalid UTF-8")


def test_hard_negative_slots(tmp_path):
  path = _write(tmp_path / "n.jsonl", [{"query": "q", "positive": "p", "negatives": ["a", "b", "c"]},
                                       {"query": "q2", "positive": "p2"}])
  rows = read_jsonl_rows([path], num_negatives=2)
  assert rows.negatives.tolist() == [["a", "b"], ["", ""]]
  assert rows.negative_valid.tolist() == [[True, True], [False, False]]


def _first_batch(spec, minilm):
  info, _ = minilm
  task = tasks.register_task(spec, tokenizer_file=info.tokenizer_file, query_length=16,
                             document_length=16, num_negatives=2, query_prompt=PROMPT,
                             document_format=DOC)
  ds = mixture.make_mixture([task], np.ones(1), host_batch_size=2, seed=0, shard_index=0,
                            num_shards=1, shuffle_buffer=1, query_length=16, document_length=16,
                            num_negatives=2, pad_id=0)
  return task, next(iter(ds)), Tokenizer(info.tokenizer_file, 16)


def write_examples(path: str, source: str, rows) -> str:
  """(query, positive, negatives) rows as tf.train.Examples in a TFRecord or ArrayRecord file."""
  def feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))

  blobs = [tf.train.Example(features=tf.train.Features(feature={
      "query": feature([q]), "positive": feature([p]), "negatives": feature(negs)})).SerializeToString()
      for q, p, negs in rows]
  if source == "tfrecord":
    with tf.io.TFRecordWriter(path) as writer:
      for blob in blobs:
        writer.write(blob)
  else:
    from array_record.python.array_record_module import ArrayRecordWriter
    writer = ArrayRecordWriter(path, "group_size:1")
    for blob in blobs:
      writer.write(blob)
    writer.close()
  return path


@pytest.mark.parametrize("source", ["tfrecord", "arrayrecord"])
def test_record_sources(tmp_path, minilm, source):
  path = write_examples(str(tmp_path / f"rows.{source}"), source,
                        [("first query", "first doc", ["neg a"]), ("second query", "second doc", [])])
  task, batch, tok = _first_batch(sources.TaskSpec("rec", (path,), source=source), minilm)
  assert task.num_rows == 2
  valid = batch["negative_valid"].numpy().tolist()
  assert sorted(valid) == [[False, False], [True, False]]
  row = valid.index([True, False])
  neg = batch["negative_ids"].numpy()[row, 0][batch["negative_mask"].numpy()[row, 0] > 0]
  assert tok.decode(neg.tolist()) == "[CLS] title : none | text : neg a [SEP]"


def test_tfds_builder_over_jsonl(tmp_path, minilm):
  from gembed.data.tfds_jsonl import JsonlConfig, JsonlTriples

  src = _write(tmp_path / "t.jsonl", [{"query": "tfds query", "positive": "tfds doc",
                                       "negatives": ["x", "y", "z"]},
                                      {"query": "other", "positive": "doc two"}])
  builder = JsonlTriples(config=JsonlConfig(name="mine", files=(src,)), data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare()
  task, batch, tok = _first_batch(sources.TaskSpec("mine", source="tfds", tfds_name=builder.data_dir),
                                  minilm)
  assert task.num_rows == 2
  assert sorted(batch["negative_valid"].numpy().tolist()) == [[False, False], [True, True]]
  queries = {tok.decode(r[m > 0].tolist()) for r, m in zip(batch["query_ids"].numpy(),
                                                           batch["query_mask"].numpy())}
  assert "[CLS] task : search result | query : tfds query [SEP]" in queries


def test_record_and_tfds_rows_with_an_empty_text_are_named(tmp_path):
  """Not a bare TensorFlow assertion: an InputError naming task, file and record (TFRecord: when
  the task is registered, as its rows are counted; ArrayRecord and TFDS: when the batch is
  drawn)."""
  path = str(tmp_path / "rows.tfrecord")
  feature = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))  # noqa: E731
  with tf.io.TFRecordWriter(path) as writer:
    for q, p in (("first query", "first doc"), ("second query", "")):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "query": feature(q), "positive": feature(p)})).SerializeToString())
  with pytest.raises(InputError, match=f"task rec: {path} record 2: an empty text in positive"):
    sources.task_source(sources.TaskSpec("rec", (path,), source="tfrecord"), 1, False)
  # ArrayRecord: counted from its index, so named when drawn, as TFDS rows are.
  path = write_examples(str(tmp_path / "rows.arrayrecord"), "arrayrecord",
                        [("first query", "first doc", []), ("", "second doc", [])])
  make_dataset, num_rows, _ = sources.task_source(
      sources.TaskSpec("arr", (path,), source="arrayrecord"), 0, False)
  rows = iter(make_dataset().batch(1))
  assert num_rows == 2 and mixture.next_batch(rows)["query"].tolist() == [b"first query"]
  with pytest.raises(InputError, match=f"task arr: {path} record 2: an empty text in query"):
    mixture.next_batch(rows)
  examples = tf.data.Dataset.from_tensor_slices({"query": ["a", ""], "positive": ["b", "c"],
                                                 "where": ["d train example 0", "d train example 1"]})
  rows = iter(sources.standardize_columns(examples, 0, "t").batch(1))
  assert mixture.next_batch(rows)["query"].tolist() == [b"a"]
  with pytest.raises(InputError, match="task t: d train example 1: an empty text in query"):
    mixture.next_batch(rows)
