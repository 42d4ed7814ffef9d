"""Encoding texts into embeddings: the life of an encode call (docs/architecture.md).

texts -> prompt/format -> tokenise all at once (Rust, multi-threaded) -> sort by length ->
batches padded to a length bucket and to a fixed row count -> jitted forward, dispatched
asynchronously (the host prepares batch i+1 while the device runs batch i) -> unsort ->
optional prefix truncation to an MRL dimension -> L2 normalisation.
"""

from __future__ import annotations

import abc
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gembed.formats.modeldir import ModelInfo
from gembed.models.embedder import apply_model
from gembed.progress import progress_bar
from gembed.tokenizer import Tokenizer
from gembed.vectors import l2_normalize

log = logging.getLogger(__name__)


def truncate_and_normalize(embeddings: np.ndarray, dim: int | None, normalize: bool) -> np.ndarray:
  """Keeps the first `dim` values (a Matryoshka prefix) and re-normalises."""
  if dim:
    if dim > embeddings.shape[-1]:
      raise ValueError(f"--dim {dim} exceeds the embedding width {embeddings.shape[-1]}")
    embeddings = embeddings[..., :dim]
  if normalize:
    embeddings = l2_normalize(embeddings)
  return embeddings.astype(np.float32)


class _BatchedEncoder(abc.ABC):
  """The encode loop of one model: tokenise, sort by length, pad each batch to a length bucket
  (and to `_rows` rows, when fixed), run `_dispatch`, unsort. Subclasses give the forward pass."""

  info: ModelInfo
  tokenizer: Tokenizer
  max_length: int
  batch_size: int
  _rows: int | None = None

  @property
  def dim(self) -> int:
    return self.info.config.embedding_dim

  @abc.abstractmethod
  def _dispatch(self, batch):
    """The batch's (rows, dim) embeddings, or something np.asarray turns into them later."""

  def embed_raw(self, texts: list[str], progress: bool = False) -> np.ndarray:
    """Full-width embeddings of already formatted texts, in input order (unnormalised where the
    forward pass leaves them so)."""
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    ids, truncated = self.tokenizer.encode(texts)
    if truncated:
      log.warning("%d of %d texts were truncated to %d tokens", truncated, len(texts), self.max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    starts = range(0, len(order), self.batch_size)
    bar = progress_bar(len(starts), progress, unit="batch")
    outputs = []
    for start in starts:
      rows = order[start:start + self.batch_size]
      batch = self.tokenizer.pad([ids[i] for i in rows], rows=self._rows)
      outputs.append((rows, self._dispatch(batch)))
      bar.update(1)
    bar.close()
    result = np.empty((len(texts), self.dim), np.float32)
    for rows, out in outputs:
      result[rows] = np.asarray(out)[:len(rows)]
    return result

  def encode(self, texts: list[str], *, task: str | None = None, dim: int | None = None,
             normalize: bool = True, progress: bool = False) -> np.ndarray:
    """Queries when `task` is given (the model's query prompt), else documents."""
    if task is not None:
      formatted = [self.info.format_query(t, task) for t in texts]
    else:
      formatted = [self.info.format_document(t) for t in texts]
    return self.encode_formatted(formatted, dim=dim, normalize=normalize, progress=progress)

  def encode_formatted(self, texts: list[str], *, dim: int | None = None, normalize: bool = True,
                       progress: bool = False) -> np.ndarray:
    return truncate_and_normalize(self.embed_raw(texts, progress), dim, normalize)


class TextEncoder(_BatchedEncoder):
  """Embeds lists of texts with one model; reusable across calls (compiled shapes are cached)."""

  def __init__(self, info: ModelInfo, params, batch_size: int = 64, max_length: int | None = None,
               devices=None):
    self.info = info
    self.max_length = min(max_length or info.max_length, info.config.max_position)
    self.tokenizer = Tokenizer(info.tokenizer_file, self.max_length)
    devices = devices if devices is not None else jax.devices()
    self.mesh = Mesh(np.asarray(devices), ("data",))
    # Fixed row count (a multiple of the device count): the last batch is padded, not recompiled.
    n = len(devices)
    self.batch_size = self._rows = max(n, -(-batch_size // n) * n)
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    config = info.config
    self._forward = jax.jit(lambda p, ids, mask: apply_model(config, p, ids, mask))

  def _dispatch(self, batch):
    input_ids = jax.device_put(batch.input_ids, self._batch_sharding)
    mask = jax.device_put(batch.attention_mask, self._batch_sharding)
    return self._forward(self.params, input_ids, mask)  # async: the host prepares the next batch


class OnnxEncoder(_BatchedEncoder):
  """The same encode path over an ONNX file of `gembed export --onnx` (onnxruntime, CPU): its
  `sentence_embedding` output, from gembed's own tokenizer, buckets and batches."""

  def __init__(self, info: ModelInfo, onnx_file: str, batch_size: int = 64,
               max_length: int | None = None):
    import onnxruntime

    self.info = info
    self.max_length = min(max_length or info.max_length, info.config.max_position)
    self.tokenizer = Tokenizer(info.tokenizer_file, self.max_length)
    self.batch_size = batch_size
    self.session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])

  def _dispatch(self, batch):
    feeds = {"input_ids": batch.input_ids.astype(np.int64),
             "attention_mask": batch.attention_mask.astype(np.int64)}
    return self.session.run(["sentence_embedding"], feeds)[0]
