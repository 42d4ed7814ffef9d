"""The streamed JSONL source: the in-memory reader's rows, bad rows named by file and line before
training, an exactly resumable iterator, and each host's share (its files, or its lines)."""

import json

import pytest
import seqio
import tensorflow as tf

from gembed.data import sources, tasks
from gembed.data.rows import read_jsonl_rows
from gembed.textio import InputError


def _write(path, lines: list[bytes]):
  path.write_bytes(b"".join(lines))
  return str(path)


def _json(row) -> bytes:
  return json.dumps(row, ensure_ascii=False).encode("utf-8")


GOOD = [
    _json({"query": "café ü", "positive": "p0", "negatives": ["a", "b", "c"], "title": "T",
           "query_id": 3, "positive_id": "d0"}) + b"\n",
    b"\n", b"  \t\r\n",  # blank lines: no row, not bad
    _json({"query": "q1", "positive": "p1", "negative": "n1"}) + b"\r\n",
    _json({"query": "q2", "positive": "p2", "negatives": []}) + b"\n",
    _json({"query": "q3", "positive": "p3", "task": "ignored"}),  # no final newline
]

# One line of every kind of bad row, and the problem it is named by.
BAD = [
    (b'{"query": "x", "positive": "y"\n', "invalid JSON"),
    (b'{"query": "caf\xe9", "positive": "p"}\n', "invalid UTF-8"),
    (b'["a list"]\n', "expected a JSON object, got list"),
    (b'{"query": "q"}\n', "missing field 'positive'"),
    (b'{"query": "q", "positive": " "}\n', "field 'positive' is empty"),
    (b'{"query": "q", "positive": 7.5}\n', "field 'positive' must be a string, got float"),
    (b'{"query": "q", "positive": "p", "negatives": ["n", ""]}\n', "field 'negatives' must be"),
    (b'{"query": "q", "positive": "p", "negatives": "n"}\n', "field 'negatives' must be"),
]


def _streamed(files, num_negatives):
  return [{k: (v.decode() if isinstance(v, bytes) else bool(v)) for k, v in ex.items()}
          for ex in sources.jsonl_dataset(tuple(files), num_negatives).as_numpy_iterator()]


def _in_memory(files, num_negatives):
  columns = read_jsonl_rows(list(files), num_negatives).as_dict()
  return [{k: (bool(v[i]) if k.endswith("_valid") else v[i]) for k, v in columns.items()}
          for i in range(len(columns["query"]))]


@pytest.mark.parametrize("num_negatives", [0, 2])
def test_streamed_rows_equal_the_in_memory_reader(tmp_path, monkeypatch, num_negatives):
  monkeypatch.setattr(sources, "LINES_PER_PARSE", 2)  # parse calls with no row in them too
  files = [_write(tmp_path / "a.jsonl", GOOD),
           _write(tmp_path / "b.jsonl", [_json({"query": f"b{i}", "positive": f"bp{i}"}) + b"\n"
                                         for i in range(5)])]
  streamed = _streamed(files, num_negatives)
  assert streamed == _in_memory(files, num_negatives)  # same rows, values and order
  assert [r["query"] for r in streamed] == \
      ["café ü", "q1", "q2", "q3", *(f"b{i}" for i in range(5))]
  if num_negatives:
    assert [(r["negative_0"], r["negative_1"]) for r in streamed[:3]] == \
        [("a", "b"), ("n1", ""), ("", "")]
    assert [(r["negative_0_valid"], r["negative_1_valid"]) for r in streamed[:3]] == \
        [(True, True), (True, False), (False, False)]
  spec = sources.TaskSpec("t", tuple(files))
  _, num_rows, bad_rows = sources.task_source(spec, num_negatives, skip_bad_rows=False)
  assert (num_rows, bad_rows) == (9, [])


def test_bad_rows_skipped_and_named_or_refused_before_training(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "LINES_PER_PARSE", 3)
  path = _write(tmp_path / "bad.jsonl", [GOOD[0]] + [line for line, _ in BAD] + [GOOD[3]])
  spec = sources.TaskSpec("t", (path,))
  make_dataset, num_rows, bad_rows = sources.task_source(spec, 1, skip_bad_rows=True)
  assert num_rows == 2
  assert [line.split(": ", 1)[0] for line in bad_rows] == \
      [f"{path}:{n}" for n in range(2, 2 + len(BAD))]
  for line, (_, problem) in zip(bad_rows, BAD):
    assert line.split(": ", 1)[1].startswith(problem), line
  assert [ex["query"] for ex in make_dataset().as_numpy_iterator()] == ["café ü".encode(), b"q1"]
  # Without skipping, the first bad row stops the run before any dataset is built.
  with pytest.raises(InputError, match=rf"^{path}:2: invalid JSON"):
    sources.task_source(spec, 1, skip_bad_rows=False)
  utf8 = _write(tmp_path / "utf8.jsonl", [GOOD[0], b"\n", BAD[1][0]])
  with pytest.raises(InputError, match=rf"^{utf8}:3: invalid UTF-8"):
    sources.task_source(sources.TaskSpec("u", (utf8,)), 1, skip_bad_rows=False)
  blank = _write(tmp_path / "blank.jsonl", [b"\n", BAD[0][0]])
  with pytest.raises(InputError, match="no valid training rows"):
    sources.task_source(sources.TaskSpec("b", (blank,)), 1, skip_bad_rows=True)


def test_iterator_checkpoint_resumes_exactly(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "LINES_PER_PARSE", 4)
  files = [_write(tmp_path / f"{name}.jsonl",
                  [_json({"query": f"{name}{i}", "positive": "p"}) + b"\n" for i in range(11)]
                  + [BAD[0][0]])
           for name in ("a", "b")]

  def stream():
    return sources.jsonl_dataset(tuple(files), 0).repeat()

  it = iter(stream())
  for _ in range(9):  # inside a parse batch, before the file boundary
    next(it)
  saved = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "ckpt" / "it"))
  expected = [next(it)["query"].numpy() for _ in range(30)]  # across files and the repeat
  assert expected[:3] == [b"a9", b"a10", b"b0"] and expected[13:15] == [b"a0", b"a1"]
  resumed = iter(stream())
  tf.train.Checkpoint(iterator=resumed).read(saved).assert_consumed()
  assert [next(resumed)["query"].numpy() for _ in range(30)] == expected


def test_arrayrecord_shares_and_exact_resume(tmp_path, monkeypatch):
  """ArrayRecord files read by position: each host's share (its files, or every n-th record of
  too few files), in order, and an iterator checkpoint that resumes exactly."""
  from test_data import write_examples

  monkeypatch.setattr(sources, "RECORDS_PER_READ", 4)
  files = tuple(write_examples(str(tmp_path / f"{name}.arrayrecord"), "arrayrecord",
                               [(f"{name}{i}", "p", []) for i in range(7)]) for name in "abc")

  def stream(files, index=0, count=1):  # the query column (negatives are a SparseTensor)
    return sources.arrayrecord_dataset(files, index, count).map(lambda ex: ex["query"])

  def queries(files, index, count):
    return [q.decode() for q in stream(files, index, count).as_numpy_iterator()]

  assert queries(files, 0, 1) == [f"{n}{i}" for n in "abc" for i in range(7)]
  assert queries(files, 1, 2) == [f"b{i}" for i in range(7)]  # files 0, 2 to host 0; 1 to host 1
  assert queries(files[:1], 1, 2) == ["a1", "a3", "a5"]  # one file: every 2nd record
  it = iter(stream(files).repeat())
  for _ in range(9):  # inside a read, past the first file
    next(it)
  saved = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "ckpt" / "it"))
  expected = [next(it).numpy() for _ in range(20)]  # across files and the repeat
  assert expected[:2] == [b"b2", b"b3"] and expected[12:14] == [b"a0", b"a1"]
  resumed = iter(stream(files).repeat())
  tf.train.Checkpoint(iterator=resumed).read(saved).assert_consumed()
  assert [next(resumed).numpy() for _ in range(20)] == expected


@pytest.mark.parametrize("num_files", [1, 3])
def test_each_host_reads_its_share_of_the_rows(tmp_path, minilm, num_files):
  """Through SeqIO's shard_info: with fewer files than hosts every host reads the lines and
  keeps its own; with as many or more, each host reads only its own files."""
  info, _ = minilm
  files = [_write(tmp_path / f"{f}.jsonl", [_json({"query": f"f{f} q{i}", "positive": "p"}) + b"\n"
                                            for i in range(7)]) for f in range(num_files)]
  task = tasks.register_task(sources.TaskSpec("shards", tuple(files)),
                             tokenizer_file=info.tokenizer_file, query_length=8, document_length=8,
                             num_negatives=0, query_prompt="{text}", document_format="{text}")

  def share(index):
    ds = task.get_dataset(None, split="train", shuffle=False, num_epochs=1, use_cached=False,
                          shard_info=seqio.ShardInfo(index, 2))
    return [ex["query_key"] for ex in ds.as_numpy_iterator()]

  def queries(index):
    return [ex["query"].decode() for ex in task.source.get_dataset(
        shuffle=False, shard_info=seqio.ShardInfo(index, 2)).as_numpy_iterator()]

  shares = [share(0), share(1)]
  assert len(set(shares[0]) | set(shares[1])) == 7 * num_files  # every row on exactly one host
  if num_files == 1:
    assert [len(s) for s in shares] == [4, 3]
    assert queries(1) == ["f0 q1", "f0 q3", "f0 q5"]
  else:  # files 0 and 2 to host 0, file 1 to host 1
    assert {q.split()[0] for q in queries(0)} == {"f0", "f2"} and len(shares[0]) == 14
    assert {q.split()[0] for q in queries(1)} == {"f1"} and len(shares[1]) == 7
  assert sources.host_share(tuple(files), 1, 2) == \
      ((tuple(files), True) if num_files == 1 else ((files[1],), False))


def test_bench_rows_are_valid_triples_of_about_100_characters(tmp_path):
  from gembed.data.rows import scan_jsonl_rows
  from gembed.tools.bench.stream import write_rows

  path = str(tmp_path / "rows.jsonl")
  write_rows(path, 25, seed=0, chunk=10)
  assert scan_jsonl_rows([path], 1) == (25, [])
  rows = read_jsonl_rows([path], 1)
  assert 80 <= sum(map(len, rows.query)) / 25 <= 120 and rows.negative_valid.all()
