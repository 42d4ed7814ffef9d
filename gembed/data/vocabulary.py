"""The checkpoint's tokenizer as a `seqio.Vocabulary`.

Token ids are gembed.tokenizer.Tokenizer's (the encode path's tokenizer), so SeqIO tasks and
`gembed encode` give identical ids, [CLS]/[SEP]-style special tokens and truncation included.
In `tf.data` a BERT WordPiece tokenizer runs as TensorFlow ops (gembed/data/ingraph.py, same
ids, no Python lock); any other tokenizer, and a text holding an added token's string such as
"[MASK]", goes through the Tokenizer in `tf.py_function`. SeqIO's `tokenize` preprocessor adds
no special tokens of its own.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import seqio
import tensorflow as tf

from gembed.data import ingraph
from gembed.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@functools.cache
def _log_fallback(tokenizer_file: str):
  """Once per file: every task builds two vocabularies over the same tokenizer."""
  log.info("%s cannot be expressed in-graph (gembed/data/ingraph.py covers BERT WordPiece): "
           "tokenising through tf.py_function", tokenizer_file)


class HfTokenizerVocabulary(seqio.Vocabulary):
  """`seqio.Vocabulary` over a Hugging Face `tokenizer.json`."""

  def __init__(self, tokenizer_file: str, max_length: int):
    self.tokenizer = Tokenizer(tokenizer_file, max_length)
    self.ingraph = ingraph.wordpiece_from_tokenizer_json(tokenizer_file, max_length)
    if self.ingraph is None:
      _log_fallback(tokenizer_file)
    super().__init__(extra_ids=0)

  @property
  def eos_id(self):
    return None  # SEP is added by the tokenizer's post-processor, never appended by SeqIO

  @property
  def unk_id(self):
    return None

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str):
    return self.tokenizer.encode([s])[0][0]

  def _decode(self, ids):
    return self.tokenizer.decode([int(i) for i in ids])

  def encode_batch_tf(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """1-D strings -> int32 RaggedTensor of ids, the training pipeline's path: in-graph, or the
    Tokenizer in `tf.py_function` for a batch holding an added token's string or a tokenizer
    ingraph.py cannot express; both give the Tokenizer's ids."""
    if self.ingraph is None:
      return self.py_function_encode_batch_tf(texts)
    return tf.cond(tf.reduce_any(self.ingraph.has_added_token(texts)),
                   lambda: self.py_function_encode_batch_tf(texts),
                   lambda: self.ingraph.encode_batch(texts))

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.encode_batch_tf(s[None])[0]

  def py_function_encode_batch_tf(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """The Tokenizer (Rust, a batch per call) in `tf.py_function`: the fallback, and
    `gembed bench data`'s baseline."""
    def encode(x):
      ids, _ = self.tokenizer.encode([t.decode("utf-8") for t in x.numpy()])
      return (np.asarray([i for row in ids for i in row], np.int32),
              np.asarray([len(row) for row in ids], np.int64))

    values, lengths = tf.py_function(encode, [texts], [tf.int32, tf.int64])
    return tf.RaggedTensor.from_row_lengths(tf.ensure_shape(values, [None]),
                                            tf.ensure_shape(lengths, [None]))

  def py_function_encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """One text through py_function_encode_batch_tf: the path before batching, for the bench."""
    return self.py_function_encode_batch_tf(s[None])[0]

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def decode(x):
      return self._decode(x.numpy().tolist())

    text = tf.py_function(decode, [ids], tf.string)
    text.set_shape([])
    return text

  def __eq__(self, other):
    return (isinstance(other, HfTokenizerVocabulary) and other.tokenizer.path == self.tokenizer.path
            and other.tokenizer.max_length == self.tokenizer.max_length)

  def __hash__(self):
    return hash((self.tokenizer.path, self.tokenizer.max_length))
