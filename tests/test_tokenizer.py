"""One tokenizer for every path: the encode path and the SeqIO vocabulary agree."""

import numpy as np

from gembed.tokenizer import Tokenizer, default_buckets

TEXTS = ["Hello, world!", "Ünïcödé and emoji 🙂 text", "x " * 400, "What is (are) Glaucoma ?"]


def test_buckets_cover_max_length_and_pad(minilm):
  info, _ = minilm
  tok = Tokenizer(info.tokenizer_file, 256)
  assert tok.buckets == default_buckets(256) and tok.buckets[-1] == 256
  ids, truncated = tok.encode(TEXTS)
  assert truncated == 1 and len(ids[2]) == 256
  assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP]
  batch = tok.pad(ids[:2], rows=4)
  assert batch.input_ids.shape == (4, 16)
  assert batch.attention_mask.sum(1).tolist() == [len(ids[0]), len(ids[1]), 0, 0]
  assert tok.bucket(17) == 32 and tok.bucket(1000) == 256


def test_seqio_vocabulary_gives_the_same_ids(minilm):
  import tensorflow as tf

  from gembed.data.vocabulary import HfTokenizerVocabulary

  info, _ = minilm
  vocab = HfTokenizerVocabulary(info.tokenizer_file, 128)
  direct, _ = Tokenizer(info.tokenizer_file, 128).encode(TEXTS)
  for text, ids in zip(TEXTS, direct):
    assert list(vocab.encode(text)) == ids
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
  ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)
  assert [x.numpy().tolist() for x in ds] == direct
  assert vocab.vocab_size == 30522 and vocab.pad_id == 0
  np.testing.assert_equal(vocab.decode(direct[0]), "[CLS] hello, world! [SEP]")
