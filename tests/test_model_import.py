"""Checkpoint import: parity with sentence-transformers and clear errors on bad checkpoints."""

import json
import shutil

import numpy as np
import pytest

from conftest import shared_data
from gembed.encode import TextEncoder
from gembed.formats import modeldir
from gembed.formats.hf import CheckpointImportError


def _parity_texts():
  long = [json.loads(l)["positive"] for l in open(shared_data("training/medquad-pairs.jsonl"))][:160]
  short = [json.loads(l)["sentence1"] for l in open(shared_data("sts/stsb/test.jsonl"))][:160]
  return long + short


def test_embeddings_match_sentence_transformers(minilm, minilm_dir):
  from sentence_transformers import SentenceTransformer

  texts = _parity_texts()
  info, params = minilm
  assert info.max_length == 256 and info.normalize
  ours = TextEncoder(info, params, batch_size=64).encode(texts)
  reference = SentenceTransformer(minilm_dir, device="cpu").encode(texts, batch_size=64)
  encoder = TextEncoder(info, params)
  lengths = [len(ids) for ids in encoder.tokenizer.encode(texts)[0]]
  assert max(lengths) > 128, "the parity set must include texts longer than 128 tokens"
  cosine = np.sum(ours * reference, axis=1)
  assert len(texts) >= 300
  assert cosine.min() >= 0.9999, cosine.min()
  assert np.abs(ours - reference).max() <= 1e-4


def _copy_model(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_unknown_architecture_is_refused_by_name(minilm_dir, tmp_path):
  model = _copy_model(minilm_dir, tmp_path / "m")
  config = json.loads((model / "config.json").read_text())
  config.update(architectures=["T5EncoderModel"], model_type="t5")
  (model / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointImportError, match="T5EncoderModel"):
    modeldir.load_model(str(model))


def test_mis_shaped_tensor_names_key_and_shapes(minilm_dir, tmp_path):
  model = _copy_model(minilm_dir, tmp_path / "m")
  config = json.loads((model / "config.json").read_text())
  config["intermediate_size"] = 1024
  (model / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointImportError,
                     match=r"encoder.layer.0.intermediate.dense.weight.*\(1536, 384\).*\(1024, 384\)"):
    modeldir.load_model(str(model))


def test_missing_tensor_names_key(minilm_dir, tmp_path):
  from safetensors.numpy import load_file, save_file

  model = _copy_model(minilm_dir, tmp_path / "m")
  tensors = load_file(str(model / "model.safetensors"))
  del tensors["encoder.layer.3.output.dense.bias"]
  save_file(tensors, str(model / "model.safetensors"))
  with pytest.raises(CheckpointImportError, match="encoder.layer.3.output.dense.bias"):
    modeldir.load_model(str(model))


def test_dense_module_becomes_projection(minilm_dir, tmp_path):
  """A sentence-transformers 2_Dense module imports as the projection head."""
  from sentence_transformers import SentenceTransformer, models

  base = SentenceTransformer(minilm_dir, device="cpu")
  dense = models.Dense(384, 64, activation_function=__import__("torch").nn.Identity())
  model = SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device="cpu")
  model.save(str(tmp_path / "dense"))
  info, params = modeldir.load_model(str(tmp_path / "dense"))
  assert info.config.projection_dim == 64
  texts = ["a short text", "another, somewhat longer sentence about embeddings"]
  ours = TextEncoder(info, params).encode(texts)
  np.testing.assert_allclose(ours, model.encode(texts), atol=1e-5)


def test_max_length_is_the_one_sentence_transformers_reads_back(minilm_dir, tmp_path):
  """sentence-transformers >= 5 saves the length in tokenizer_config.json only; gembed must read
  the same length (it read the 512 of max_position before)."""
  from sentence_transformers import SentenceTransformer

  model = SentenceTransformer(minilm_dir, device="cpu")
  model.max_seq_length = 96
  model.save(str(tmp_path / "saved"))
  assert SentenceTransformer(str(tmp_path / "saved"), device="cpu").max_seq_length == 96
  info, _ = modeldir.load_model(str(tmp_path / "saved"))
  assert info.max_length == 96
  assert modeldir.load_model(minilm_dir)[0].max_length == 256  # sentence_bert_config.json's
