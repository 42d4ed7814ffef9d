"""The BERT WordPiece tokenizer as TensorFlow ops, so `tf.data` tokenises on all its threads.

The py_function path (gembed.tokenizer.Tokenizer inside `tf.py_function`) holds Python's lock
for each call (one batch at a time per process). This module rebuilds the family of `tokenizer.json` it can
express exactly (BertNormalizer, BertPreTokenizer, WordPiece, `[CLS] A [SEP]`) from TensorFlow
and tensorflow-text ops; its ids equal the Tokenizer's, truncation and special tokens included
(tests/test_ingraph_tokenizer.py). Every character rule below is Hugging Face's (Rust), not
Google's original BERT (Python), where the two differ.
"""

from __future__ import annotations

import json

import tensorflow as tf
import tensorflow_text as tf_text

# Rust's char::is_whitespace; \t \n \r are whitespace, not control characters, in both steps.
WHITESPACE = r"[\t\n\x0b\x0c\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}" \
             r"\x{205f}\x{3000}]"
# clean_text drops \x00, U+FFFD and category C (Cc Cf Co Cs) except \t \n \r.
DROPPED = r"\x{fffd}|[^\PC\t\n\r]"
# handle_chinese_chars: the CJK ideograph blocks of HF's is_chinese_char.
CJK = (r"([\x{4e00}-\x{9fff}\x{3400}-\x{4dbf}\x{20000}-\x{2a6df}\x{2a700}-\x{2b73f}"
       r"\x{2b740}-\x{2b81f}\x{2b920}-\x{2ceaf}\x{f900}-\x{faff}\x{2f800}-\x{2fa1f}])")
# BertPreTokenizer's punctuation: every ASCII punctuation character (some are symbols, S*) and P*.
PUNCTUATION = r"[!-/:-@\[-`{-~\pP]"


class InGraphTokenizer:
  """`encode_batch`: 1-D strings -> int32 RaggedTensor, each row `[CLS]` + WordPiece ids +
  `[SEP]`; `encode`: the same for one scalar string. A batch per call spreads TensorFlow's
  per-op cost over its texts (6x the texts/s of one text per call here)."""

  def __init__(self, vocab: list[str], normalizer: dict, unk_token: str, suffix: str,
               max_chars: int, specials: tuple[int, int], added: list[str], max_length: int):
    self.normalizer = normalizer
    self.unk_token = unk_token
    self.max_chars = max_chars
    self.specials = specials
    self.max_length = max_length
    # HF matches added tokens ([CLS], [MASK], ...) in the raw text before normalising.
    self.added_pattern = "|".join(_escape(t) for t in added) if added else None
    # HF makes a word over max_chars characters one [UNK]: `encode` swaps in the unk token's own
    # string (a vocab entry); 4 bytes a character keeps FastWordpiece's byte limit out of the way.
    self.wordpiece = tf_text.FastWordpieceTokenizer(
        vocab, suffix_indicator=suffix, max_bytes_per_word=4 * max_chars, token_out_type=tf.int32,
        unknown_token=unk_token, no_pretokenization=True, support_detokenization=False)

  def has_added_token(self, text: tf.Tensor) -> tf.Tensor:
    """True where `text` holds an added token's string, which `encode` does not split out."""
    if self.added_pattern is None:
      return tf.constant(False)
    return tf.strings.regex_full_match(text, f"(?s).*(?:{self.added_pattern}).*")

  def normalize(self, text: tf.Tensor) -> tf.Tensor:
    """HF's BertNormalizer, its steps in its order."""
    n = self.normalizer
    if n["clean_text"]:
      text = tf.strings.regex_replace(text, DROPPED, "")
      text = tf.strings.regex_replace(text, WHITESPACE, " ")
    if n["handle_chinese_chars"]:
      text = tf.strings.regex_replace(text, CJK, r" \1 ")
    strip_accents = n["strip_accents"]
    if n["lowercase"] if strip_accents is None else strip_accents:
      text = tf.strings.regex_replace(tf_text.normalize_utf8(text, "NFD"), r"\p{Mn}", "")
    if n["lowercase"]:
      # Rust lowercases char by char: a final capital sigma is σ, never ICU's contextual ς.
      text = tf.strings.lower(tf.strings.regex_replace(text, "Σ", "σ"), encoding="utf-8")
    return text

  def words(self, text: tf.Tensor) -> tf.Tensor:
    """BertPreTokenizer: split on whitespace, and each punctuation character is a word."""
    # One static regex, compiled once (tf_text.regex_split compiles its patterns on every call,
    # several times slower): words end up between ASCII spaces, which tf.strings.split removes.
    spaced = tf.strings.regex_replace(text, f"{WHITESPACE}|({PUNCTUATION})", r" \1 ")
    return tf.strings.split(spaced)

  def encode_batch(self, texts: tf.Tensor) -> tf.RaggedTensor:
    words = self.words(self.normalize(texts))  # [texts, words]
    words = tf.ragged.map_flat_values(lambda w: tf.where(
        tf.strings.length(w, unit="UTF8_CHAR") > self.max_chars, self.unk_token, w), words)
    ids = self.wordpiece.tokenize(words).merge_dims(1, 2)  # [texts, pieces]
    ids = ids[:, :self.max_length - 2]  # room for the 2 specials
    cls, sep = self.specials
    count = tf.shape(texts, out_type=tf.int64)[:1]
    return tf.concat([tf.fill(tf.concat([count, [1]], 0), cls), ids,
                      tf.fill(tf.concat([count, [1]], 0), sep)], axis=1)

  def encode(self, text: tf.Tensor) -> tf.Tensor:
    return self.encode_batch(text[None])[0]


def _escape(s: str) -> str:
  return "".join(f"\\x{{{ord(c):x}}}" for c in s)


def _specials(post: dict | None) -> tuple[int, int] | None:
  """The `[CLS]`, `[SEP]` ids of a post-processor that gives `CLS A SEP`, else None."""
  if post is None:
    return None
  if post["type"] == "BertProcessing":
    return post["cls"][1], post["sep"][1]
  if post["type"] != "TemplateProcessing":
    return None
  single = post["single"]
  shape = [next(iter(piece)) for piece in single]
  if shape != ["SpecialToken", "Sequence", "SpecialToken"] or single[1]["Sequence"]["id"] != "A":
    return None
  ids = [post["special_tokens"][single[i]["SpecialToken"]["id"]]["ids"] for i in (0, 2)]
  return (ids[0][0], ids[1][0]) if all(len(i) == 1 for i in ids) else None


def wordpiece_from_tokenizer_json(tokenizer_file: str, max_length: int) -> InGraphTokenizer | None:
  """The in-graph tokenizer of `tokenizer_file`; None when this module cannot match it exactly."""
  with open(tokenizer_file, encoding="utf-8") as f:
    spec = json.load(f)
  normalizer, model = spec.get("normalizer") or {}, spec["model"]
  specials = _specials(spec.get("post_processor"))
  if (normalizer.get("type") != "BertNormalizer" or model.get("type") != "WordPiece"
      or (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer"
      or specials is None or max_length < 3 or model["unk_token"] not in model["vocab"]):
    return None
  vocab = sorted(model["vocab"], key=model["vocab"].get)
  if [model["vocab"][t] for t in vocab] != list(range(len(vocab))):
    return None
  added = spec.get("added_tokens") or []
  if any(t["normalized"] or t["lstrip"] or t["rstrip"] or t["single_word"] for t in added):
    return None
  return InGraphTokenizer(vocab, normalizer, model["unk_token"],
                          model["continuing_subword_prefix"], model["max_input_chars_per_word"],
                          specials, [t["content"] for t in added], max_length)
