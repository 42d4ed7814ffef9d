"""The checkpoint's own tokenizer (Hugging Face `tokenizers`), with no TensorFlow dependency.

This is the single source of token ids: the encode path calls it directly and the SeqIO
vocabulary (gembed/data/vocabulary.py) wraps it, so both give identical ids, special tokens
included. Batches are padded to a small set of length buckets so jit compiles once per bucket.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np
import tokenizers


def default_buckets(max_length: int) -> tuple[int, ...]:
  """Lengths a batch is padded to: fine steps for short texts (where most are), coarse above."""
  steps = [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]
  steps += list(range(768, max_length + 1, 256))
  return tuple(sorted({s for s in steps if s < max_length} | {max_length}))


@dataclasses.dataclass
class TokenBatch:
  input_ids: np.ndarray  # (batch, length) int32
  attention_mask: np.ndarray  # (batch, length) int32; 1 = real token


class Tokenizer:
  """Wraps a `tokenizer.json`; truncation and padding are gembed's, not the file's."""

  def __init__(self, tokenizer_file: str, max_length: int, buckets: tuple[int, ...] | None = None):
    self.path = tokenizer_file
    self.max_length = max_length
    self.buckets = tuple(buckets) if buckets else default_buckets(max_length)
    self._tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    # The file's own settings (all-MiniLM-L6-v2: truncate and pad to 128) are overridden.
    self._tok.no_padding()
    self._tok.enable_truncation(max_length)
    self.pad_id = self._pad_id()

  def _pad_id(self) -> int:
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
      token_id = self._tok.token_to_id(token)
      if token_id is not None:
        return token_id
    return 0

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  def encode(self, texts: list[str]) -> tuple[list[list[int]], int]:
    """Token ids with special tokens, truncated to max_length; also the count truncated."""
    encodings = self._tok.encode_batch(list(texts))
    truncated = sum(1 for e in encodings if e.overflowing)
    return [e.ids for e in encodings], truncated

  def decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=False)

  def bucket(self, length: int) -> int:
    i = bisect.bisect_left(self.buckets, length)
    return self.buckets[min(i, len(self.buckets) - 1)]

  def pad(self, ids: list[list[int]], length: int | None = None, rows: int | None = None) -> TokenBatch:
    """Right-pads to `length` (default: the bucket of the longest) and to `rows` rows."""
    length = length or self.bucket(max((len(x) for x in ids), default=1))
    rows = rows or len(ids)
    input_ids = np.full((rows, length), self.pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for row, seq in enumerate(ids):
      seq = seq[:length]
      input_ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = 1
    return TokenBatch(input_ids, mask)
