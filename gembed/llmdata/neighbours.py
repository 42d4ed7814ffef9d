"""Corpus embedding in chunks, for mining (the search itself is gembed.vectors.top_k).

Embeddings are written chunk by chunk to a float32 .npy memmap, so a corpus larger than memory is
embedded without holding it, and a killed run continues from its last finished chunk.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from gembed.progress import progress_bar


def params_digest(params) -> str:
  """SHA-256 of every parameter (computed once per model: an LLM's weights take a while)."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(params):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def embeddings_fingerprint(model_digest: str, max_length: int, texts: list[str]) -> str:
  """What an embeddings file depends on: the model, the max length, every text."""
  digest = hashlib.sha256(f"{model_digest} {max_length}".encode())
  for text in texts:
    digest.update(text.encode("utf-8") + b"\0")
  return digest.hexdigest()


def embed_to_file(encoder, texts: list[str], path: str, *, chunk_size: int = 8192,
                  progress: bool = True, desc: str = "embedding",
                  model_digest: str | None = None) -> np.ndarray:
  """L2-normalised embeddings of already formatted texts, written to `path` (.npy) in chunks.

  After each chunk `path.progress.json` records how many rows are done; a rerun with the same
  model and texts (same fingerprint) continues from there instead of starting over."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fingerprint = embeddings_fingerprint(model_digest or params_digest(encoder.params),
                                       encoder.max_length, texts)
  progress_file = f"{path}.progress.json"
  done = 0
  if os.path.exists(path) and os.path.exists(progress_file):
    with open(progress_file) as f:
      state = json.load(f)
    if state.get("fingerprint") == fingerprint:
      done = state["rows_done"]
  if done:
    out = np.load(path, mmap_mode="r+")
  else:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(len(texts), encoder.dim))
  bar = progress_bar(len(texts), progress, desc, unit="text")
  bar.update(done)
  for start in range(done, len(texts), chunk_size):
    chunk = texts[start:start + chunk_size]
    out[start:start + len(chunk)] = encoder.encode_formatted(chunk, normalize=True)
    out.flush()
    with open(f"{progress_file}.tmp", "w") as f:
      json.dump({"fingerprint": fingerprint, "rows_done": start + len(chunk)}, f)
    os.replace(f"{progress_file}.tmp", progress_file)
    bar.update(len(chunk))
  bar.close()
  return np.load(path, mmap_mode="r")
