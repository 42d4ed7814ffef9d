"""Text inputs: reading them with errors that name the file and line, and the identity of a text."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import re


class InputError(ValueError):
  """Bad user input; the message names the file, the line and the problem."""


def expand_files(path: str) -> list[str]:
  """A data file name, or a glob of shards (sorted, so every host sees one order)."""
  if not any(c in path for c in "*?["):
    return [path]
  found = sorted(glob.glob(path))
  if not found:
    raise FileNotFoundError(f"no file matches {path}")
  return found


def text_identity(text: str) -> str:
  """What makes two texts the same (de-duplication, the false-negative mask): case-folded,
  whitespace collapsed."""
  return re.sub(r"\s+", " ", text).strip().casefold()


def identity_key(text: str, ident: str = "") -> int:
  """A non-negative int32 key of a text: a hash of its id when it has one, else of its identity."""
  key = f"id:{ident}" if ident else text_identity(text)
  return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest()) & 0x7FFFFFFF


def _raw_lines(path: str, raw: bytes | None):
  """(line number, bytes without the newline) of a file, read a line at a time: split at b"\n"
  only, as tf.data.TextLineDataset does (a "\r" before it goes in decode_line)."""
  with open(path, "rb") if raw is None else io.BytesIO(raw) as f:
    for number, line in enumerate(f, start=1):
      yield number, line.removesuffix(b"\n")


def decode_line(line: bytes) -> str:
  """A line's UTF-8 text without a trailing "\r"; ValueError naming the problem if not UTF-8."""
  try:
    return line.decode("utf-8").rstrip("\r")
  except UnicodeDecodeError as e:
    raise ValueError(f"invalid UTF-8 ({e.reason} at byte {e.start})") from None


def jsonl_object(line: bytes) -> dict | None:
  """The object on one line of a JSON Lines file, None for a blank line; ValueError naming the
  problem for a line that is not UTF-8, not JSON or not an object. Every JSONL reader's rule,
  the streamed training source's included (gembed/data/sources.py)."""
  text = decode_line(line)
  if not text.strip():
    return None
  try:
    row = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"invalid JSON ({e.msg})") from None
  if not isinstance(row, dict):
    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
  return row


def reject(bad: list[str] | None, problem: str) -> None:
  """A bad input line: an InputError, or, given a `bad` list, named there to be skipped."""
  if bad is None:
    raise InputError(problem) from None
  bad.append(problem)


def read_lines(path: str, raw: bytes | None = None) -> list[str]:
  """UTF-8 lines of a file (without newline), with invalid UTF-8 reported by line. `raw`: the
  file's bytes when they were read some other way (Beam's FileSystems for gs:// paths)."""
  lines = []
  for number, line in _raw_lines(path, raw):
    try:
      lines.append(decode_line(line))
    except ValueError as e:
      raise InputError(f"{path}:{number}: {e}") from None
  return lines


def iter_jsonl(path: str, raw: bytes | None = None, bad: list[str] | None = None):
  """Yields (line_number, object) for each non-blank line of a JSON Lines file, reading a line at
  a time. A line that is not UTF-8, not JSON or not an object is an error naming file and line;
  given a `bad` list, it is named there ("file:line: problem") and skipped instead."""
  for number, line in _raw_lines(path, raw):
    try:
      row = jsonl_object(line)
    except ValueError as e:
      reject(bad, f"{path}:{number}: {e}")
      continue
    if row is not None:
      yield number, row


def report_bad_rows(bad: list[str], paths: list[str], log) -> None:
  """One warning: how many rows were skipped in which files, and the first three by name."""
  if bad:
    log.warning("skipped %d bad rows in %s: %s%s", len(bad), ", ".join(paths), "; ".join(bad[:3]),
                "; ..." if len(bad) > 3 else "")


def read_texts(path: str, field: str = "text") -> list[str]:
  """Texts to encode: `.jsonl` (the `field` of each row) or plain text (one per line)."""
  texts = []
  if path.endswith(".jsonl"):
    for number, row in iter_jsonl(path):
      value = row.get(field)
      if not isinstance(value, str):
        raise InputError(f"{path}:{number}: field {field!r} must be a string, "
                         f"got {type(value).__name__ if field in row else 'nothing'}")
      if not value.strip():
        raise InputError(f"{path}:{number}: field {field!r} is empty")
      texts.append(value)
  else:
    for number, line in enumerate(read_lines(path), start=1):
      if not line.strip():
        raise InputError(f"{path}:{number}: empty line (one text per line is expected)")
      texts.append(line)
  if not texts:
    raise InputError(f"{path}: no texts to encode")
  return texts
