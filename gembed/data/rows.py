"""Training rows from JSONL files of pairs or triples, validated row by row (no TensorFlow).

A row: {"query": str, "positive": str, optional "negative": str or "negatives": [str],
"title" (the positive's title), "task", "query_id", "positive_id"}. A malformed row is an
error naming file, line and problem, or (with `skip_bad_rows`) skipped and named: every kind
(invalid UTF-8 or JSON, not an object, a missing, empty or mistyped field) by "file:line: problem".
One rule per line (row_columns over textio.jsonl_object) serves the in-memory reader, the
streamed source's first pass (scan_jsonl_rows) and its parse in tf.data (line_columns).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from gembed.textio import InputError, iter_jsonl, jsonl_object, reject, report_bad_rows

log = logging.getLogger(__name__)

STRING_FIELDS = ("query", "positive", "title", "query_id", "positive_id")


@dataclasses.dataclass
class Rows:
  """Columns of a training set; negatives padded to K slots with '' and valid=False."""

  query: np.ndarray
  positive: np.ndarray
  title: np.ndarray
  negatives: np.ndarray  # (N, K) str
  negative_valid: np.ndarray  # (N, K) bool
  query_id: np.ndarray  # '' when absent: the key then comes from the normalised text
  positive_id: np.ndarray
  bad_rows: list = dataclasses.field(default_factory=list)  # "file:line: problem", skipped

  def __len__(self):
    return len(self.query)

  def as_dict(self) -> dict[str, np.ndarray]:
    out = {"query": self.query, "positive": self.positive, "title": self.title,
           "query_id": self.query_id, "positive_id": self.positive_id}
    for k in range(self.negatives.shape[1]):
      out[f"negative_{k}"] = self.negatives[:, k]
      out[f"negative_{k}_valid"] = self.negative_valid[:, k]
    return out


def _string(row, key, required):
  value = row.get(key)
  if value is None:
    if required:
      raise ValueError(f"missing field {key!r}")
    return ""
  if not isinstance(value, (str, int)) or isinstance(value, bool):
    raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
  value = str(value)
  if required and not value.strip():
    raise ValueError(f"field {key!r} is empty")
  return value


def _negatives(row) -> list[str]:
  if "negatives" in row:
    values = row["negatives"]
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
      raise ValueError("field 'negatives' must be a list of non-empty strings")
    return values
  if row.get("negative") is not None:
    return [_string(row, "negative", required=True)]
  return []


def column_names(num_negatives: int) -> list[str]:
  """The columns of every training source, in order (Rows.as_dict's)."""
  return [*STRING_FIELDS, *(name for k in range(num_negatives)
                            for name in (f"negative_{k}", f"negative_{k}_valid"))]


def row_columns(row: dict, num_negatives: int) -> dict[str, str | bool]:
  """One JSONL object as the columns, up to `num_negatives` hard negatives in their slots;
  ValueError naming the problem of a bad row."""
  columns = {key: _string(row, key, required=key in ("query", "positive")) for key in STRING_FIELDS}
  negatives = _negatives(row)[:num_negatives]
  for k in range(num_negatives):
    columns[f"negative_{k}"] = negatives[k] if k < len(negatives) else ""
    columns[f"negative_{k}_valid"] = k < len(negatives)
  return columns


def line_columns(line: bytes, num_negatives: int) -> dict[str, str | bool] | None:
  """The columns of one JSONL line (bytes, no newline); None for a blank or bad line, which
  scan_jsonl_rows has named (or refused) before training."""
  try:
    row = jsonl_object(line)
    return None if row is None else row_columns(row, num_negatives)
  except ValueError:
    return None


def iter_jsonl_rows(paths: list[str], num_negatives: int, bad: list[str] | None):
  """The columns of every valid row of JSONL files, a line at a time; a bad row is an InputError
  naming file and line, or, given a `bad` list, named there and skipped."""
  for path in paths:
    for number, row in iter_jsonl(path, bad=bad):
      try:
        columns = row_columns(row, num_negatives)
      except ValueError as e:
        reject(bad, f"{path}:{number}: {e}")
        continue
      yield columns


def _checked(count: int, bad: list[str] | None, paths: list[str]) -> list[str]:
  """The bad rows skipped (logged); an InputError when no row is valid."""
  report_bad_rows(bad or [], paths, log)
  if not count:
    raise InputError(f"{', '.join(paths)}: no valid training rows")
  return bad or []


def scan_jsonl_rows(paths: list[str], num_negatives: int,
                    skip_bad_rows: bool = False) -> tuple[int, list[str]]:
  """(number of valid rows, bad rows skipped) of JSONL files, validated a line at a time: memory
  does not grow with the files. The streamed source's first pass (gembed/data/sources.py)."""
  bad = [] if skip_bad_rows else None
  count = sum(1 for _ in iter_jsonl_rows(paths, num_negatives, bad))
  return count, _checked(count, bad, paths)


def read_jsonl_rows(paths: list[str], num_negatives: int, skip_bad_rows: bool = False) -> Rows:
  """Reads and validates rows into memory; keeps up to `num_negatives` hard negatives per row."""
  bad = [] if skip_bad_rows else None
  rows = list(iter_jsonl_rows(paths, num_negatives, bad))
  bad_rows = _checked(len(rows), bad, paths)

  slots = range(num_negatives)
  shape = (len(rows), num_negatives)
  return Rows(
      **{key: np.asarray([row[key] for row in rows], dtype=object) for key in STRING_FIELDS},
      negatives=np.asarray([[row[f"negative_{k}"] for k in slots] for row in rows],
                           dtype=object).reshape(shape),
      negative_valid=np.asarray([[row[f"negative_{k}_valid"] for k in slots] for row in rows],
                                dtype=bool).reshape(shape),
      bad_rows=bad_rows)
