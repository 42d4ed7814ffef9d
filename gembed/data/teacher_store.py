"""Precomputed teacher embeddings (`distill.teacher_embeddings`, docs/distill.md): a directory
that `gembed teacher-embed` writes once and every training host then reads, so the student's
steps do not run the teacher.

Each embedding is keyed by the text exactly as the student sees it (prompts applied) and its
side (queries and documents are cut to different lengths):

    manifest.json                 teacher, dim, query_length, document_length, count, shard_rows
    keys.npy                      int64 (count,): sorted text keys, loaded whole (8 bytes a text)
    embeddings-00000.npy ...      float16 (shard_rows, dim): the embeddings in key order,
                                  memory-mapped, so resident memory does not grow with the corpus

No TensorFlow and no model here: the data pipeline looks texts up (preprocessors), the
`teacher-embed` tool fills the directory.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

MANIFEST = "manifest.json"
KEYS = "keys.npy"
QUERY, DOCUMENT = "query", "document"


def text_key(side: str, text: bytes | str) -> int:
  """A 64-bit key of (side, formatted text): the same in the writer and in every host."""
  data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
  digest = hashlib.blake2b(side.encode() + b"\x00" + data, digest_size=8).digest()
  return int.from_bytes(digest, "little", signed=True)


def _shard_name(index: int) -> str:
  return f"embeddings-{index:05d}.npy"


def write(directory: str, keys: np.ndarray, embeddings: np.ndarray, *, teacher: str,
          query_length: int, document_length: int, shard_rows: int = 1 << 20) -> dict:
  """Writes embeddings (rows matching `keys`, unique) as a store; returns its manifest."""
  keys = np.asarray(keys, np.int64)
  if len(np.unique(keys)) != len(keys):
    raise ValueError("teacher store: keys must be unique")
  order = np.argsort(keys, kind="stable")
  os.makedirs(directory, exist_ok=True)
  np.save(os.path.join(directory, KEYS), keys[order])
  ordered = np.asarray(embeddings, np.float32)[order]
  shards = max(1, -(-len(keys) // shard_rows))
  for i in range(shards):
    np.save(os.path.join(directory, _shard_name(i)),
            ordered[i * shard_rows:(i + 1) * shard_rows].astype(np.float16))
  manifest = {"teacher": teacher, "dim": int(ordered.shape[1]), "query_length": query_length,
              "document_length": document_length, "count": int(len(keys)),
              "shard_rows": shard_rows, "shards": shards}
  with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"distill.teacher_embeddings {directory}: no {MANIFEST}; write it "
                            "with `gembed teacher-embed --config CONFIG --out DIR`")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class TeacherStore:
  """Read side: embeddings of formatted texts, looked up by key."""

  def __init__(self, directory: str):
    self.manifest = read_manifest(directory)
    self.directory = directory
    self.dim = self.manifest["dim"]
    self._rows = self.manifest["shard_rows"]
    self._keys = np.load(os.path.join(directory, KEYS))
    self._shards = [np.load(os.path.join(directory, _shard_name(i)), mmap_mode="r")
                    for i in range(self.manifest["shards"])]

  def check_lengths(self, query_length: int, document_length: int) -> None:
    """Embeddings of texts cut at other lengths are other embeddings: refuse them."""
    have = (self.manifest["query_length"], self.manifest["document_length"])
    if have != (query_length, document_length):
      raise ValueError(f"distill.teacher_embeddings {self.directory}: written for query / "
                       f"document lengths {have}, this run has {(query_length, document_length)}")

  def lookup(self, side: str, text: bytes | str) -> np.ndarray:
    """The float32 (dim,) embedding of one formatted text; a KeyError naming it if absent."""
    key = text_key(side, text)
    index = int(np.searchsorted(self._keys, key))
    if index == len(self._keys) or self._keys[index] != key:
      shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
      raise KeyError(f"distill.teacher_embeddings {self.directory}: no {side} embedding for "
                     f"{shown[:80]!r}; the store was written for other data or prompts: run "
                     "`gembed teacher-embed` again with this config")
    return np.asarray(self._shards[index // self._rows][index % self._rows], np.float32)
