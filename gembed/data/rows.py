"""Training rows from JSONL files of pairs or triples, validated row by row (no TensorFlow).

A row: {"query": str, "positive": str, optional "negative": str or "negatives": [str],
"title" (the positive's title), "task", "query_id", "positive_id"}. A malformed row is an
error naming file, line and problem, or (with `skip_bad_rows`) skipped and named: every kind
(invalid UTF-8 or JSON, not an object, a missing, empty or mistyped field) by "file:line: problem".
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from gembed.textio import InputError, iter_jsonl, report_bad_rows

log = logging.getLogger(__name__)


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


def read_jsonl_rows(paths: list[str], num_negatives: int, skip_bad_rows: bool = False,
                    max_rows: int | None = None) -> Rows:
  """Reads and validates rows; keeps up to `num_negatives` hard negatives per row."""
  cols = {k: [] for k in ("query", "positive", "title", "query_id", "positive_id")}
  negatives, valid = [], []
  bad = [] if skip_bad_rows else None
  for path in paths:
    for number, row in iter_jsonl(path, bad=bad):
      try:
        parsed = {"query": _string(row, "query", True), "positive": _string(row, "positive", True),
                  "title": _string(row, "title", False), "query_id": _string(row, "query_id", False),
                  "positive_id": _string(row, "positive_id", False)}
        negs = _negatives(row)[:num_negatives]
      except ValueError as e:
        if bad is None:
          raise InputError(f"{path}:{number}: {e}") from None
        bad.append(f"{path}:{number}: {e}")
        continue
      for k, v in parsed.items():
        cols[k].append(v)
      negatives.append(negs + [""] * (num_negatives - len(negs)))
      valid.append([True] * len(negs) + [False] * (num_negatives - len(negs)))
      if max_rows and len(cols["query"]) >= max_rows:
        break
  report_bad_rows(bad or [], paths, log)
  if not cols["query"]:
    raise InputError(f"{', '.join(paths)}: no valid training rows")
  n = len(cols["query"])
  return Rows(
      **{k: np.asarray(v, dtype=object) for k, v in cols.items()},
      negatives=np.asarray(negatives, dtype=object).reshape(n, num_negatives),
      negative_valid=np.asarray(valid, dtype=bool).reshape(n, num_negatives),
      bad_rows=bad or [])
