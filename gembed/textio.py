"""Text inputs: reading them with errors that name the file and line, and the identity of a text."""

from __future__ import annotations

import glob
import hashlib
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


def _lines(path: str, raw: bytes | None, bad: list[str] | None):
  """(line number, UTF-8 text) of a file's lines; invalid UTF-8 is an error naming the line, or,
  given a `bad` list, the line is named there and skipped."""
  if raw is None:
    with open(path, "rb") as f:
      raw = f.read()
  lines = raw.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  for number, line in enumerate(lines, start=1):
    try:
      yield number, line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
      problem = f"{path}:{number}: invalid UTF-8 ({e.reason} at byte {e.start})"
      if bad is None:
        raise InputError(problem) from None
      bad.append(problem)


def read_lines(path: str, raw: bytes | None = None) -> list[str]:
  """UTF-8 lines of a file (without newline), with invalid UTF-8 reported by line. `raw`: the
  file's bytes when they were read some other way (Beam's FileSystems for gs:// paths)."""
  return [line for _, line in _lines(path, raw, None)]


def iter_jsonl(path: str, raw: bytes | None = None, bad: list[str] | None = None):
  """Yields (line_number, object) for each non-blank line of a JSON Lines file. A line that is
  not UTF-8, not JSON or not an object is an error naming file and line; given a `bad` list,
  it is named there ("file:line: problem") and skipped instead."""
  for number, line in _lines(path, raw, bad):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    except ValueError as e:  # json.JSONDecodeError is a ValueError
      problem = f"{path}:{number}: " + (f"invalid JSON ({e.msg})"
                                         if isinstance(e, json.JSONDecodeError) else str(e))
      if bad is None:
        raise InputError(problem) from None
      bad.append(problem)
      continue
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
