"""The in-graph WordPiece tokenizer gives the Tokenizer's ids, and anything else falls back."""

import json
import logging
import os

import pytest
import tensorflow as tf
from conftest import shared_data

from gembed.data import ingraph
from gembed.data.vocabulary import HfTokenizerVocabulary
from gembed.formats.hf import TOKENIZER_FILE
from gembed.tokenizer import Tokenizer

TRICKY = [
    "Héllo Wörld, Ångström über ÉCOLE", "UPPER lower MiXeD", "中文字符 and 漢字", "ひらがな カタカナ",
    "emoji 🙂🎉 👍🏽 ok", "a\x00b\x07c\x1fd\x7fe", "tab\there\nnew\rline\x0bv\x0cf\x85n",
    "bad \ufffd char", "!!!...???,,,;;;", "«guillemets» — ‘single’ “double” ¿qué? ¡sí!",
    "x" * 150, "a" * 100 + " " + "b" * 101, "0123456789 3.14159 1,000,000", " ", "", "\t\n",
    "ΟΔΟΣ ΚΑΛΟΣ İstanbul Straße", "zero\u200bwidth\ufeffbom nbsp\u00a0ideo\u3000space",
    "$5 + 3 = 8 ^ ` | ~ <tag>", "cafe\u0301 ﬁ Ⅻ ①", "عربى हिन्दी ไทย русский",
]
# JSONL fields holding a text, across the shared data's task types.
FIELDS = ("query", "positive", "negative", "text", "sentence1", "sentence2", "source", "target")


@pytest.fixture(scope="module")
def tokenizer_file(minilm_dir):
  return os.path.join(minilm_dir, TOKENIZER_FILE)


def _same_ids(tokenizer_file, texts, max_length):
  """One text per call (`encode`) and batches of 64 (`encode_batch`, the pipeline's path)."""
  want, _ = Tokenizer(tokenizer_file, max_length).encode(texts)
  tokenizer = ingraph.wordpiece_from_tokenizer_json(tokenizer_file, max_length)
  texts_ds = tf.data.Dataset.from_tensor_slices(texts)
  one = [x.numpy().tolist() for x in texts_ds.map(tokenizer.encode, num_parallel_calls=2)]
  batched = [row.numpy().tolist() for batch in texts_ds.batch(64).map(tokenizer.encode_batch)
             for row in batch]
  for got in (one, batched):
    bad = [(t, a, b) for t, a, b in zip(texts, want, got) if a != b]
    assert not bad and len(got) == len(texts), f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]}"


def test_tricky_strings_give_identical_ids(tokenizer_file):
  _same_ids(tokenizer_file, TRICKY, 128)
  _same_ids(tokenizer_file, ["a long text " * 20, "short", "one two three " * 5], 16)


def test_real_texts_in_many_languages_give_identical_ids(tokenizer_file):
  root = shared_data("")
  paths = sorted(root.glob("training/*.jsonl")) + sorted(root.glob("sts/stsb-multi-mt/*/*.jsonl"))
  paths += sorted(root.glob("retrieval/xquad/*/queries.jsonl"))
  paths += sorted(root.glob("bitext/tatoeba/*.jsonl"))[::4]
  texts = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      for _, line in zip(range(20), f):
        row = json.loads(line)
        texts += [row[k] for k in FIELDS if isinstance(row.get(k), str)]
  texts = list(dict.fromkeys(texts))[:3000]
  assert len(texts) > 1000
  _same_ids(tokenizer_file, texts, 128)


def test_a_text_with_an_added_token_goes_through_the_tokenizer(tokenizer_file):
  vocab = HfTokenizerVocabulary(tokenizer_file, 32)
  texts = ["fill [MASK] here", "no special"]
  ds = tf.data.Dataset.from_tensor_slices(texts).map(vocab.encode_tf)
  assert [x.numpy().tolist() for x in ds] == vocab.tokenizer.encode(texts)[0]
  batch = vocab.encode_batch_tf(tf.constant(texts))  # the whole batch through the Tokenizer
  assert batch.to_list() == vocab.tokenizer.encode(texts)[0]


def test_other_tokenizers_fall_back_to_py_function(tmp_path, caplog):
  import tokenizers

  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3}, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  path = str(tmp_path / "tokenizer.json")
  tok.save(path)
  assert ingraph.wordpiece_from_tokenizer_json(path, 16) is None
  with caplog.at_level(logging.INFO, logger="gembed.data.vocabulary"):
    vocab = HfTokenizerVocabulary(path, 16)
  assert vocab.ingraph is None and path in caplog.text
  ds = tf.data.Dataset.from_tensor_slices(["hello world", "world foo"]).map(vocab.encode_tf)
  assert [x.numpy().tolist() for x in ds] == [[2, 3], [3, 0]]


def test_the_vocabulary_tokenises_in_graph_inside_tf_data(tokenizer_file):
  vocab = HfTokenizerVocabulary(tokenizer_file, 16)
  assert vocab.ingraph is not None
  spec = tf.TensorSpec([], tf.string)
  graph_ops = {op.type for op in tf.function(vocab.ingraph.encode).get_concrete_function(
      spec).graph.get_operations()}
  assert not any("PyFunc" in t for t in graph_ops)
  texts = ["Hello, World!", "Ünïcödé 🙂"]
  ds = tf.data.Dataset.from_tensor_slices(texts).map(vocab.encode_tf)
  assert [x.numpy().tolist() for x in ds] == vocab.tokenizer.encode(texts)[0]
