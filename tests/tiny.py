"""Tiny real-format fixtures: a random BERT checkpoint directory and random batches."""

import json
import os
import shutil

import jax
import numpy as np
from safetensors.numpy import save_file

from gembed.formats.hf import encoder_params_to_hf, hf_config_dict
from gembed.models.config import ModelConfig
from gembed.models.embedder import init_params

TINY = ModelConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                   intermediate_size=64, max_position=128, dropout_rate=0.0)


def make_tiny_bert_dir(path, tokenizer_file, seed=0) -> str:
  """A Hugging Face-format BertModel with random weights and the MiniLM tokenizer."""
  os.makedirs(path, exist_ok=True)
  params = init_params(TINY, jax.random.PRNGKey(seed))
  save_file(encoder_params_to_hf(params, TINY), os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config_dict(TINY), f)
  shutil.copyfile(tokenizer_file, os.path.join(path, "tokenizer.json"))
  return str(path)


def random_batch(seed, batch=8, num_negatives=2, query_length=12, doc_length=16, vocab=1000):
  rng = np.random.default_rng(seed)

  def tokens(shape, length):
    ids = rng.integers(1000, 1000 + vocab, size=shape + (length,), dtype=np.int32)
    lengths = rng.integers(3, length + 1, size=shape)
    mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
    return ids * mask, mask

  q_ids, q_mask = tokens((batch,), query_length)
  p_ids, p_mask = tokens((batch,), doc_length)
  n_ids, n_mask = tokens((batch, num_negatives), doc_length)
  q_key = np.arange(batch, dtype=np.int32)
  p_key = np.arange(batch, dtype=np.int32) + 1000
  q_key[-1] = q_key[0]  # a duplicate query
  p_key[-2] = p_key[1]  # a duplicate positive
  valid = rng.random((batch, num_negatives)) > 0.25
  return {"query_ids": q_ids, "query_mask": q_mask, "positive_ids": p_ids, "positive_mask": p_mask,
          "negative_ids": n_ids, "negative_mask": n_mask, "negative_valid": valid,
          "query_key": q_key, "positive_key": p_key}


def group_by_length(batch, groups):
  """NumPy twin of gembed.data.batching.group_by_length, each group cut to its own longest text
  (no buckets): the rows sorted by their longest text and cut into `groups` groups."""
  longest = np.max([batch["query_mask"].sum(-1), batch["positive_mask"].sum(-1),
                    batch["negative_mask"].sum(-1).max(-1)], axis=0)
  out = []
  for part in np.split(np.argsort(longest, kind="stable"), groups):
    group = {k: v[part] for k, v in batch.items()}
    lengths = {"query": group["query_mask"].sum(-1).max(),
               "positive": max(group["positive_mask"].sum(-1).max(), group["negative_mask"].sum(-1).max())}
    lengths["negative"] = lengths["positive"]
    for side, length in lengths.items():
      for field in (f"{side}_ids", f"{side}_mask"):
        group[field] = group[field][..., :length]
    out.append(group)
  return tuple(out)
