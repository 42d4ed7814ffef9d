"""Content-addressed cache of LLM responses: one small JSON file per request, named by the SHA-256
of the canonical request body (model, messages, sampling settings).

Files are written to a temporary name and renamed, so a killed run never leaves a half-written
entry, and workers on several machines can share one cache on a shared filesystem or an object
store (any path `tf.io.gfile` opens: local, gs://, s3:// with the TF plugins).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid


def request_key(body: dict) -> str:
  canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _is_url(path: str) -> bool:
  return "://" in path


class ResponseCache:

  def __init__(self, root: str):
    self.root = root.rstrip("/")
    if _is_url(self.root):
      import tensorflow as tf  # object stores: gs://, s3://
      self._fs = tf.io.gfile
    else:
      self._fs = None
      os.makedirs(self.root, exist_ok=True)

  def path(self, key: str) -> str:
    return f"{self.root}/{key[:2]}/{key}.json"

  def get(self, key: str) -> str | None:
    path = self.path(key)
    try:
      if self._fs is None:
        with open(path, encoding="utf-8") as f:
          entry = json.load(f)
      else:
        if not self._fs.exists(path):
          return None
        with self._fs.GFile(path, "r") as f:
          entry = json.loads(f.read())
    except (FileNotFoundError, ValueError):
      return None  # absent, or unreadable: ask again
    return entry.get("response")

  def put(self, key: str, body: dict, content: str):
    path = self.path(key)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    text = json.dumps({"request": body, "response": content}, ensure_ascii=False)
    if self._fs is None:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
      os.replace(tmp, path)
    else:
      self._fs.makedirs(os.path.dirname(path))
      with self._fs.GFile(tmp, "w") as f:
        f.write(text)
      self._fs.rename(tmp, path, overwrite=True)
