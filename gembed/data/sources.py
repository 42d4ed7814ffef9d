"""Where a task's rows come from: JSONL files (streamed a line at a time), labelled files (read
whole: rows pair texts by label), TFRecord or ArrayRecord files of tf.train.Examples, or a TFDS
dataset. Every
source yields the same columns: query, positive, title, query_id, positive_id and K hard-negative
slots (negative_k, negative_k_valid), and only the share of host `index` of `count`
(`host_share`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from gembed.data import labelled
from gembed.data.rows import column_names, line_columns, scan_jsonl_rows
from gembed.textio import InputError


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One training dataset: JSONL or TFRecord files, or a TFDS dataset."""

  name: str
  files: tuple[str, ...] = ()
  prompt_task: str = "search result"  # the {task} in the query prompt
  rate: float | None = None  # explicit mixture rate; None: from the mixing rule
  weight: float = 1.0  # multiplies the proportional / temperature rule's rate
  source: str = "jsonl"  # jsonl | tfrecord | arrayrecord | tfds | classification | clustering
  tfds_name: str = ""  # a registered TFDS name or a prepared dataset directory (source = tfds)
  tfds_data_dir: str = ""
  split: str = "train"
  seed: int = 0  # the pairing and negatives of labelled sources


# TFRecord and ArrayRecord rows: tf.train.Example with these bytes features (negatives: any number).
TFRECORD_FEATURES = {
    "query": tf.io.FixedLenFeature([], tf.string),
    "positive": tf.io.FixedLenFeature([], tf.string),
    "title": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "query_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "positive_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "negatives": tf.io.VarLenFeature(tf.string),
}


EMPTY_TEXT = "an empty text"  # in the message of a refused TFRecord/TFDS row (refused_row)


def standardize_columns(ds, num_negatives: int, task_name: str):
  """TFRecord/TFDS examples, each with `where` (its file and record, or its split and index),
  -> the JSONL source's columns (K negative slots + validity). A row with an empty query or
  positive stops the pipeline naming it (`refused_row` makes that an InputError)."""
  def fn(ex):
    out = {}
    for key in ("query", "positive"):
      tf.debugging.Assert(tf.strings.length(ex[key]) > 0, [tf.strings.join(
          [f"task {task_name}: ", ex["where"], f": {EMPTY_TEXT} in {key}"])])
      out[key] = ex[key]
    for key in ("title", "query_id", "positive_id"):
      out[key] = ex[key] if key in ex else tf.constant("")
    negatives = ex.get("negatives", tf.zeros([0], tf.string))
    if isinstance(negatives, tf.SparseTensor):
      negatives = tf.sparse.to_dense(negatives, default_value="")
    count = tf.size(negatives)
    padded = tf.concat([negatives, tf.fill([num_negatives], "")], axis=0)
    for k in range(num_negatives):
      out[f"negative_{k}"] = padded[k]
      out[f"negative_{k}_valid"] = k < count
    return out
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def refused_row(error: tf.errors.InvalidArgumentError) -> str | None:
  """The message naming the row that standardize_columns refused, or None for another error."""
  if EMPTY_TEXT not in error.message:
    return None
  start = error.message.index("task ")
  return error.message[start:error.message.index("]", start)].strip()


def host_share(files: tuple[str, ...], index: int, count: int) -> tuple[tuple[str, ...], bool]:
  """(the files host `index` of `count` reads, whether it then keeps every count-th record of
  them). With at least as many files as hosts each host reads its own files (every count-th),
  so reading scales out; with fewer, every host reads them all and keeps its records, parsing
  only those."""
  if count == 1:
    return files, False
  if len(files) >= count:
    return files[index::count], False
  return files, True


def every_nth(ds: tf.data.Dataset, index: int, count: int) -> tf.data.Dataset:
  """Host `index` of `count`'s rows of a source read whole; one host: the dataset unchanged (an
  added op would change the graph, and a checkpointed iterator would no longer restore)."""
  return ds.shard(count, index) if count > 1 else ds


def parsed_example(path, n, record):
  """A TFRecord/ArrayRecord record's columns and `where` = "FILE record N" (from 1, as lines)."""
  return dict(tf.io.parse_single_example(record, TFRECORD_FEATURES),
              where=tf.strings.join([path, " record ", tf.strings.as_string(n)]))


def tfrecord_dataset(files: tuple[str, ...], index: int = 0, count: int = 1) -> tf.data.Dataset:
  """Parsed tf.train.Examples of the files in order, each with `where` = "FILE record N"
  (counted from 1, as lines are); host `index` of `count` reads its share (host_share)."""
  files, keep_every = host_share(files, index, count)

  def records(path):
    numbered = tf.data.TFRecordDataset(path).enumerate(start=1)
    if keep_every:
      numbered = numbered.shard(count, index)
    return numbered.map(lambda n, record: parsed_example(path, n, record))
  return tf.data.Dataset.from_tensor_slices(list(files)).flat_map(records)


RECORDS_PER_READ = 256  # ArrayRecord records per Python call: its overhead spread over many rows


def arrayrecord_size(path: str) -> int:
  from array_record.python.array_record_module import ArrayRecordReader

  reader = ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def arrayrecord_dataset(files: tuple[str, ...], index: int = 0, count: int = 1) -> tf.data.Dataset:
  """Parsed tf.train.Examples of ArrayRecord files (the random-access format Grain and TFDS
  write) in order, each with `where`; host `index` of `count` reads its share (host_share). The
  records are read by position, RECORDS_PER_READ per stateless call, so the iterator checkpoint
  is the position: exact resume."""
  from array_record.python.array_record_module import ArrayRecordReader

  files, keep_every = host_share(files, index, count)
  readers = {}  # one open reader per file, shared by every read of this dataset

  def read(path, positions):
    path = path.decode()
    if path not in readers:
      readers[path] = ArrayRecordReader(path)
    return np.asarray(readers[path].read(positions.tolist()), dtype=object)

  def records(path, size):
    positions = tf.data.Dataset.range(size)
    if keep_every:
      positions = positions.shard(count, index)

    def fetch(batch):
      blobs = tf.numpy_function(read, [path, batch], tf.string, stateful=False)
      blobs.set_shape([None])
      return batch, blobs
    blobs = positions.batch(RECORDS_PER_READ).map(fetch).unbatch()
    return blobs.map(lambda n, record: parsed_example(path, n + 1, record))
  sizes = [arrayrecord_size(f) for f in files]
  return tf.data.Dataset.from_tensor_slices((list(files), np.asarray(sizes, np.int64))).flat_map(records)


LINES_PER_PARSE = 256  # JSONL lines per Python call: its overhead spread over many rows


def jsonl_dataset(files: tuple[str, ...], num_negatives: int, index: int = 0,
                  count: int = 1) -> tf.data.Dataset:
  """The rows of JSONL files in file and line order, read a line at a time: memory does not grow
  with the files. Each line is parsed and validated by the rule of the first pass
  (rows.scan_jsonl_rows, which counted the rows and named or refused the bad ones); blank and bad
  lines yield nothing. Every step is a checkpointable tf.data op (the iterator saves its file
  offset), so a resumed run continues exactly; tf.data.Dataset.from_generator would not.
  Host `index` of `count` reads and parses its share alone (host_share)."""
  names = column_names(num_negatives)
  types = [tf.bool if name.endswith("_valid") else tf.string for name in names]

  def parse(lines):  # stateless: the same lines give the same rows
    rows = [row for row in (line_columns(line, num_negatives) for line in lines) if row]
    return [np.asarray([row[name] for row in rows], dtype=bool if t == tf.bool else object)
            for name, t in zip(names, types)]

  def parse_batch(lines):
    columns = tf.numpy_function(parse, [lines], types, stateful=False)
    for column in columns:
      column.set_shape([None])
    return dict(zip(names, columns))

  files, keep_every = host_share(files, index, count)
  lines = tf.data.TextLineDataset(list(files))
  if keep_every:
    lines = lines.shard(count, index)
  return lines.batch(LINES_PER_PARSE).map(parse_batch).unbatch()


def task_source(spec: TaskSpec, num_negatives: int, skip_bad_rows: bool):
  """(dataset_fn(index=0, count=1): host `index` of `count`'s share of the rows, number of rows
  (all hosts'), bad rows skipped) of one task, in the JSONL columns."""
  if spec.source == "jsonl":
    num_rows, bad_rows = scan_jsonl_rows(list(spec.files), num_negatives, skip_bad_rows)
    return (lambda index=0, count=1: jsonl_dataset(spec.files, num_negatives, index, count),
            num_rows, bad_rows)
  if spec.source in labelled.KINDS:
    rows = labelled.read_labelled_rows(list(spec.files), spec.source, num_negatives, spec.seed,
                                       skip_bad_rows)
    columns = {k: (v.astype(str) if v.dtype == object else v) for k, v in rows.as_dict().items()}
    def labelled_rows(index=0, count=1):
      return every_nth(tf.data.Dataset.from_tensor_slices(columns), index, count)
    return labelled_rows, len(rows), rows.bad_rows
  if skip_bad_rows:
    raise ValueError(f"task {spec.name}: data.skip_bad_rows applies to JSONL and labelled "
                     "sources only")
  if spec.source in ("tfrecord", "arrayrecord"):
    missing = [f for f in spec.files if not tf.io.gfile.exists(f)]
    if missing:
      raise FileNotFoundError(f"task {spec.name}: no such {spec.source} file(s): {missing}")
  if spec.source == "arrayrecord":
    def arrayrecord(index=0, count=1):
      return standardize_columns(arrayrecord_dataset(spec.files, index, count), num_negatives,
                                 spec.name)
    # Counted from the files' indexes, not by reading: a row with an empty text is named when
    # the batch holding it is drawn, as for TFDS.
    return arrayrecord, sum(arrayrecord_size(f) for f in spec.files), []
  if spec.source == "tfrecord":
    def tfrecord(index=0, count=1):
      return standardize_columns(tfrecord_dataset(spec.files, index, count), num_negatives,
                                 spec.name)
    try:  # the count reads every row: a refused one is named before training starts
      count = int(tfrecord().reduce(0, lambda n, _: n + 1))
    except tf.errors.InvalidArgumentError as e:
      if refused_row(e) is None:
        raise
      raise InputError(refused_row(e)) from None
    return tfrecord, count, []
  if spec.source == "tfds":
    import tensorflow_datasets as tfds

    if tf.io.gfile.isdir(spec.tfds_name):  # a prepared dataset directory (e.g. JsonlTriples')
      builder = tfds.builder_from_directory(spec.tfds_name)
    else:  # a registered TFDS name, e.g. "glue/mrpc"
      builder = tfds.builder(spec.tfds_name, data_dir=spec.tfds_data_dir or None)

    def tfds_dataset(index=0, count=1):
      ds = builder.as_dataset(split=spec.split, shuffle_files=False).enumerate()
      ds = every_nth(ds, index, count)
      where = f"{spec.tfds_name} {spec.split} example "
      return standardize_columns(
          ds.map(lambda i, ex: dict(ex, where=tf.strings.join([where, tf.strings.as_string(i)]))),
          num_negatives, spec.name)
    return tfds_dataset, builder.info.splits[spec.split].num_examples, []
  raise ValueError(f"task {spec.name}: source {spec.source!r}; use jsonl, tfrecord, arrayrecord, tfds, "
                   f"{' or '.join(labelled.KINDS)}")
