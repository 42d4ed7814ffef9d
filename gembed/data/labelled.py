"""Classification sets as contrastive training rows (method.md sections 2 and 4).

Input: `{"text", "label"}` JSONL (the classification layout of shared/data, and what
`gembed synth classification` writes). Two source kinds turn it into training rows:

- `classification`: (text, the text of its label), hard negatives: other labels' texts;
- `clustering`: (text, another text of the same label), hard negatives: texts of other labels.

For both other pairings of a set, declare two tasks over the same files. Every row's
`positive_id` is its label, so the false-negative mask drops every in-batch column of the same
label from a row's denominator (the reason the report has the mask), while its own target stays.
All choices come from one `numpy` generator seeded by `seed`: the rows are deterministic.
"""

from __future__ import annotations

import logging

import numpy as np

from gembed.data.rows import Rows, read_jsonl_rows
from gembed.textio import InputError, iter_jsonl, reject, report_bad_rows

log = logging.getLogger(__name__)

KINDS = ("classification", "clustering")


def label_text(label: str) -> str:
  """The positive text of a label: identifiers like `card_arrival` read as words."""
  return label.replace("_", " ")


def _labelled_row(row) -> tuple[str, str]:
  text, label = row.get("text"), row.get("label")
  if not isinstance(text, str) or not text.strip():
    raise ValueError("field 'text' must be a non-empty string")
  if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
    raise ValueError("field 'label' must be a non-empty string or integer")
  return text, str(label)


def read_labelled(paths: list[str], skip_bad_rows: bool = False) -> tuple[list[str], list[str], list[str]]:
  """(texts, labels, bad rows) of `{"text", "label"}` files; a bad row names file and line, and
  is an error, or with `skip_bad_rows` skipped and listed."""
  texts, labels = [], []
  bad = [] if skip_bad_rows else None
  for path in paths:
    for number, row in iter_jsonl(path, bad=bad):
      try:
        text, label = _labelled_row(row)
      except ValueError as e:
        reject(bad, f"{path}:{number}: {e}")
        continue
      texts.append(text)
      labels.append(label)
  report_bad_rows(bad or [], paths, log)
  return texts, labels, bad or []


def labelled_rows(texts: list[str], labels: list[str], kind: str, num_negatives: int,
                  seed: int) -> tuple[Rows, int]:
  """(rows, dropped): the contrastive rows of one labelled set. `clustering` drops texts whose
  label has no other text (nothing to pair them with)."""
  if kind not in KINDS:
    raise ValueError(f"labelled source {kind!r}: use one of {', '.join(KINDS)}")
  rng = np.random.default_rng(seed)
  names = sorted(set(labels))
  members = {name: [] for name in names}
  for i, label in enumerate(labels):
    members[label].append(i)
  position = {i: n for pool in members.values() for n, i in enumerate(pool)}
  cols = {k: [] for k in ("query", "positive", "positive_id")}
  negatives, valid, dropped = [], [], 0
  for i, (text, label) in enumerate(zip(texts, labels)):
    if kind == "classification":
      positive = label_text(label)
    else:
      pool = members[label]
      if len(pool) < 2:
        dropped += 1
        continue
      k = int(rng.integers(len(pool) - 1))  # any other member: skip the text's own place
      positive = texts[pool[k + (k >= position[i])]]
    other_labels = [n for n in names if n != label]
    negs = []
    if num_negatives and other_labels:
      if kind == "classification":
        chosen = rng.choice(len(other_labels), min(num_negatives, len(other_labels)), replace=False)
        negs = [label_text(other_labels[c]) for c in chosen]
      else:
        for _ in range(num_negatives):
          pool = members[other_labels[int(rng.integers(len(other_labels)))]]
          negs.append(texts[pool[int(rng.integers(len(pool)))]])
    cols["query"].append(text)
    cols["positive"].append(positive)
    cols["positive_id"].append(f"label:{label}")
    negatives.append(negs + [""] * (num_negatives - len(negs)))
    valid.append([True] * len(negs) + [False] * (num_negatives - len(negs)))
  n = len(cols["query"])
  empty = np.asarray([""] * n, dtype=object)
  rows = Rows(query=np.asarray(cols["query"], dtype=object),
              positive=np.asarray(cols["positive"], dtype=object), title=empty, query_id=empty,
              positive_id=np.asarray(cols["positive_id"], dtype=object),
              negatives=np.asarray(negatives, dtype=object).reshape(n, num_negatives),
              negative_valid=np.asarray(valid, dtype=bool).reshape(n, num_negatives))
  return rows, dropped


def read_labelled_rows(paths: list[str], kind: str, num_negatives: int, seed: int = 0,
                       skip_bad_rows: bool = False) -> Rows:
  """The training rows of labelled files for the source kind `kind` (see the module doc)."""
  texts, labels, bad_rows = read_labelled(paths, skip_bad_rows)
  if len(set(labels)) < 2:
    raise InputError(f"{', '.join(paths)}: a {kind} source needs at least two labels, "
                     f"found {sorted(set(labels))}")
  rows, dropped = labelled_rows(texts, labels, kind, num_negatives, seed)
  if dropped:
    log.warning("%s: %d texts dropped (their label has no other text to pair with)",
                ", ".join(paths), dropped)
  if not len(rows):
    raise InputError(f"{', '.join(paths)}: no {kind} training rows")
  rows.bad_rows = bad_rows
  return rows


def read_task_rows(source: str, paths: list[str], num_negatives: int, seed: int = 0,
                   skip_bad_rows: bool = False) -> Rows:
  """The rows of a JSONL (pairs/triples) or labelled (`classification`/`clustering`) task."""
  if source == "jsonl":
    return read_jsonl_rows(paths, num_negatives, skip_bad_rows)
  return read_labelled_rows(paths, source, num_negatives, seed, skip_bad_rows)
