"""Export to sentence-transformers: same embeddings there as in gembed, and lossless round trips."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from gembed import checkpoint
from gembed.cli import command as cli
from gembed.encode import TextEncoder
from gembed.formats import modeldir, sentence_transformers
from gembed.models.embedder import init_params

QUERIES = ["how do I sort a list in python?", "symptoms of iron deficiency",
           "what is the capital of australia", "convert a string to lowercase",
           "why is the sky blue during the day but red at sunset?"]
DOCUMENTS = ["sorted(iterable) returns a new list; list.sort() sorts in place.",
             "Iron deficiency can cause tiredness, pale skin and shortness of breath.",
             "Canberra is the capital city of Australia.",
             "str.lower() returns a copy of the string converted to lowercase.",
             "Rayleigh scattering makes short wavelengths dominate the daytime sky."]


@pytest.fixture(scope="module")
def trained_like_model(minilm, tmp_path_factory):
  """MiniLM + a new 128-d projection (random, with a non-zero bias), report prompts, MRL dims:
  the shape of a gembed training result, written as a gembed model directory."""
  info, params = minilm
  config = info.config.replace(projection_dim=128)
  head = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(3))["projection"])
  head["bias"] = np.random.default_rng(0).normal(0, 0.05, head["bias"].shape).astype(np.float32)
  info = dataclasses.replace(info, config=config, query_prompt="task: {task} | query: {text}",
                             document_format="title: {title} | text: {text}", mrl_dims=(128, 64),
                             max_length=128)
  path = str(tmp_path_factory.mktemp("model"))
  modeldir.write_model_info(info, path)
  checkpoint.save_params(os.path.join(path, modeldir.PARAMS_SUBDIR), {**params, "projection": head})
  return path


def _cosines(a, b):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return np.sum(a * b, axis=1)


def _gembed(model, texts, task=None, dim=None):
  info, params = modeldir.load_model(model)
  return TextEncoder(info, params).encode(texts, task=task, dim=dim)


def test_sentence_transformers_loads_the_export_with_equal_embeddings(trained_like_model, tmp_path):
  from sentence_transformers import SentenceTransformer

  out = str(tmp_path / "st")
  assert cli.main(["export", "--model", trained_like_model, "--output", out]) == 0
  model = SentenceTransformer(out, device="cpu")
  assert model.get_embedding_dimension() == 128 and model.max_seq_length == 128
  assert model.prompts["query"] == "task: search result | query: "
  assert model.prompts["code retrieval"] == "task: code retrieval | query: "
  assert model.prompts["document"] == "title: none | text: "

  queries = model.encode(QUERIES, prompt_name="query")
  documents = model.encode(DOCUMENTS, prompt_name="document")
  assert _cosines(queries, _gembed(trained_like_model, QUERIES, task="search result")).min() >= 0.9999
  assert _cosines(documents, _gembed(trained_like_model, DOCUMENTS)).min() >= 0.9999
  code = model.encode(QUERIES, prompt_name="code retrieval")
  assert _cosines(code, _gembed(trained_like_model, QUERIES, task="code retrieval")).min() >= 0.9999

  small = SentenceTransformer(out, device="cpu", truncate_dim=64)
  truncated = small.encode(QUERIES, prompt_name="query")
  assert truncated.shape == (len(QUERIES), 64)
  ours = _gembed(trained_like_model, QUERIES, task="search result", dim=64)
  assert _cosines(truncated, ours).min() >= 0.9999

  card = open(os.path.join(out, "README.md")).read()
  assert "128, 64" in card and "truncate_dim=64" in card and '"dimensions": d' in card


def test_import_export_import_round_trips(trained_like_model, tmp_path):
  first = str(tmp_path / "first")
  assert cli.main(["export", "--model", trained_like_model, "--output", first]) == 0
  info, params = modeldir.load_model(first)
  original_info, original_params = modeldir.load_model(trained_like_model)
  assert (info.query_prompt, info.document_format, info.mrl_dims, info.max_length, info.normalize) == (
      original_info.query_prompt, original_info.document_format, (128, 64), 128, True)
  assert info.config == original_info.config
  jax.tree.map(np.testing.assert_array_equal, params, original_params)

  second = str(tmp_path / "second")
  assert cli.main(["export", "--model", first, "--output", second]) == 0
  _, again = modeldir.load_model(second)
  jax.tree.map(np.testing.assert_array_equal, again, original_params)
  for name in ("model.safetensors", "2_Dense/model.safetensors", "modules.json"):
    assert open(os.path.join(first, name), "rb").read() == open(os.path.join(second, name), "rb").read()
  np.testing.assert_array_equal(_gembed(second, QUERIES, task="fact checking"),
                                _gembed(trained_like_model, QUERIES, task="fact checking"))


def test_exporting_the_pretrained_checkpoint_keeps_its_embeddings(minilm_dir, tmp_path):
  from sentence_transformers import SentenceTransformer

  out = str(tmp_path / "minilm")
  assert cli.main(["export", "--model", "all-MiniLM-L6-v2", "--output", out]) == 0
  modules = json.load(open(os.path.join(out, "modules.json")))
  assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
  assert set(SentenceTransformer(out, device="cpu").prompts.values()) <= {""}  # no prompts
  reference = SentenceTransformer(minilm_dir, device="cpu").encode(DOCUMENTS)
  exported = SentenceTransformer(out, device="cpu").encode(DOCUMENTS)
  np.testing.assert_allclose(exported, reference, atol=1e-6)


def test_a_template_that_is_not_a_prefix_is_refused(trained_like_model, tmp_path):
  info, params = modeldir.load_model(trained_like_model)
  odd = dataclasses.replace(info, query_prompt="{text} (task: {task})")
  with pytest.raises(ValueError, match="must end with {text}"):
    sentence_transformers.write_sentence_transformers(odd, params, str(tmp_path / "out"))


def _family_tokenizer(family, path):
  """A small tokenizer of the family's own transformers class, as a real checkpoint ships one:
  transformers 5 rebuilds Qwen2's pipeline from its class whatever tokenizer_config.json says, so
  MiniLM's WordPiece file would not tokenize alike there."""
  transformers = pytest.importorskip("transformers")
  cls = {"llama": transformers.LlamaTokenizer, "qwen2": transformers.Qwen2Tokenizer,
         "gemma": transformers.GemmaTokenizer}[family]
  tokenizer = cls().train_new_from_iterator((QUERIES + DOCUMENTS) * 4, vocab_size=300)
  if tokenizer.pad_token is None:  # Llama ships none; sentence-transformers pads its batches
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.save_pretrained(path)
  return len(tokenizer)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma"])
def decoder_model(request, tmp_path_factory):
  """A tiny random decoder-family gembed model directory with prompts, a projection and MRL dims."""
  from gembed.models.config import ModelConfig
  family = request.param
  path = str(tmp_path_factory.mktemp(family))
  vocab = _family_tokenizer(family, path)
  config = ModelConfig(family=family, vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                       num_kv_heads=2, attention_head_dim=16 if family == "gemma" else 0,
                       intermediate_size=48, max_position=128, layer_norm_eps=1e-6,
                       hidden_act="gelu_tanh" if family == "gemma" else "silu",
                       attention_bias=family == "qwen2", projection_dim=24)
  params = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(1)))
  rng = np.random.default_rng(1)
  # Norm scales start at 1 (Gemma: 0) and biases at 0: perturb them so that every tensor matters.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + rng.normal(0, 0.1, x.shape).astype(np.float32)
      if p[-1].key in ("scale", "bias") else x, params)
  info = modeldir.ModelInfo(config=config, tokenizer_file=os.path.join(path, "tokenizer.json"),
                            max_length=64, query_prompt="task: {task} | query: {text}",
                            document_format="title: {title} | text: {text}", mrl_dims=(24, 12))
  modeldir.save_model(info, params, path)
  return family, path


def test_decoder_families_export_as_bidirectional_encoders(decoder_model, tmp_path):
  """transformers' AutoModel and SentenceTransformer both embed a decoder export like gembed, a
  lone unpadded text included (the path where sdpa could fall back to its causal flag)."""
  import torch
  import transformers
  from safetensors.numpy import load_file
  from sentence_transformers import SentenceTransformer

  family, model_dir = decoder_model
  out = str(tmp_path / "st")
  assert cli.main(["export", "--model", model_dir, "--output", out]) == 0
  assert json.load(open(os.path.join(out, "config.json")))["model_type"] == family

  texts = [f"title: none | text: {d}" for d in DOCUMENTS]
  ours = _gembed(model_dir, DOCUMENTS)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  transformer = transformers.AutoModel.from_pretrained(out).eval()
  dense = load_file(os.path.join(out, "2_Dense", "model.safetensors"))
  for batch in (texts, texts[:1]):
    inputs = tokenizer(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
      hidden = transformer(**inputs).last_hidden_state.numpy()
    mask = inputs["attention_mask"].numpy()[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    theirs = pooled @ dense["linear.weight"].T + dense["linear.bias"]
    assert _cosines(theirs, ours[:len(batch)]).min() >= 0.9999

  model = SentenceTransformer(out, device="cpu")
  assert _cosines(model.encode(DOCUMENTS, prompt_name="document"), ours).min() >= 0.9999
  queries = model.encode(QUERIES, prompt_name="query")
  assert _cosines(queries, _gembed(model_dir, QUERIES, task="search result")).min() >= 0.9999
  alone = model.encode(QUERIES[:1], prompt_name="query")
  assert _cosines(alone, queries[:1]).min() >= 0.9999

  _, params = modeldir.load_model(out)  # and gembed imports its own export back
  jax.tree.map(np.testing.assert_array_equal, params, modeldir.load_model(model_dir)[1])


def test_a_decoder_config_without_a_transformers_equivalent_is_refused(decoder_model, tmp_path):
  info, params = modeldir.load_model(decoder_model[1])
  for config in (info.config.replace(causal=True),
                 info.config.replace(attention_bias=not info.config.attention_bias)):
    with pytest.raises(ValueError, match="causal|attention_bias"):
      sentence_transformers.write_sentence_transformers(dataclasses.replace(info, config=config),
                                                        params, str(tmp_path / "out"))


@pytest.fixture(scope="module")
def onnx_export(trained_like_model, tmp_path_factory):
  """The trained-like model (MiniLM + Dense head + normalisation) exported with --onnx."""
  for package in ("onnxruntime", "onnx", "onnxscript"):
    pytest.importorskip(package, reason=f"`gembed export --onnx` needs {package}: "
                        "pip install -e '.[onnx]'")
  out = str(tmp_path_factory.mktemp("onnx") / "st")
  assert cli.main(["export", "--model", trained_like_model, "--output", out, "--onnx"]) == 0
  return out


def _onnx_encoder(out, file, batch_size=64):
  from gembed.encode import OnnxEncoder
  info, _ = modeldir.load_model(out)
  return OnnxEncoder(info, os.path.join(out, "onnx", file), batch_size=batch_size)


def test_onnx_fp32_embeds_like_gembed(onnx_export, trained_like_model):
  import onnxruntime
  import torch
  import transformers

  fp32 = _onnx_encoder(onnx_export, "model.onnx")
  ours = TextEncoder(*modeldir.load_model(trained_like_model))
  gembed_queries = ours.encode(QUERIES, task="search result")
  gembed_documents = ours.encode(DOCUMENTS)
  for batch_size in (64, 2):  # one padded batch; batches of two (and a last one of one)
    fp32.batch_size = batch_size
    assert _cosines(fp32.encode(QUERIES, task="search result"), gembed_queries).min() >= 0.9999
    assert _cosines(fp32.encode(DOCUMENTS), gembed_documents).min() >= 0.9999
  # MRL prefixes come from the full-width output, as in gembed
  assert _cosines(fp32.encode(QUERIES, task="search result", dim=64),
                  ours.encode(QUERIES, task="search result", dim=64)).min() >= 0.9999

  # A lone unpadded text, and the first output: the Transformer module's hidden states, what
  # sentence-transformers' ONNX backend reads from onnx/model.onnx.
  session = onnxruntime.InferenceSession(os.path.join(onnx_export, "onnx", "model.onnx"))
  ids, _ = fp32.tokenizer.encode([fp32.info.format_document(DOCUMENTS[2])])
  hidden, embedding = session.run(None, {"input_ids": np.asarray(ids, np.int64),
                                         "attention_mask": np.ones((1, len(ids[0])), np.int64)})
  assert _cosines(embedding, gembed_documents[2:3]).min() >= 0.9999
  with torch.no_grad():
    reference = transformers.AutoModel.from_pretrained(onnx_export)(
        input_ids=torch.tensor(ids)).last_hidden_state.numpy()
  np.testing.assert_allclose(hidden, reference, atol=1e-4)


def test_onnx_int8_stays_close_to_gembed(onnx_export, trained_like_model):
  int8 = _onnx_encoder(onnx_export, "model_qint8.onnx")
  texts = QUERIES + DOCUMENTS
  cosines = _cosines(int8.encode(texts), _gembed(trained_like_model, texts))
  print(f"int8 vs gembed: min cosine {cosines.min():.4f}, mean {cosines.mean():.4f}")
  # Measured here (AVX512-VNNI CPU): min 0.9895, mean 0.9941; int8 kernels differ between CPUs.
  assert cosines.min() >= 0.98
  size = os.path.getsize(os.path.join(onnx_export, "onnx", "model_qint8.onnx"))
  assert size < 0.3 * os.path.getsize(os.path.join(onnx_export, "onnx", "model.onnx"))


def test_eval_scores_the_onnx_files_through_the_same_evaluator(onnx_export, tmp_path):
  from conftest import shared_data
  from gembed.evaluation import suite

  data = str(shared_data(""))
  scores = {}
  for name, extra in (("jax", []), ("fp32", ["--onnx", os.path.join(onnx_export, "onnx", "model.onnx")]),
                      ("int8", ["--onnx", os.path.join(onnx_export, "onnx", "model_qint8.onnx")])):
    out = str(tmp_path / name)
    assert cli.main(["eval", "--model", onnx_export, "--data", data, "--tasks", "sts/stsb",
                     "--max-examples", "100", "--dims", "128", "--output", out, *extra]) == 0
    scores[name] = suite.main_score(json.load(open(os.path.join(out, "results.json"))), "sts/stsb")
  assert abs(scores["fp32"] - scores["jax"]) < 0.05  # Spearman x 100: the same embeddings
  assert scores["int8"] != scores["fp32"]  # really the int8 file
  assert abs(scores["int8"] - scores["jax"]) < 3


def test_export_onnx_without_the_extra_says_what_to_install(trained_like_model, tmp_path, monkeypatch,
                                                            capsys):
  import sys
  # As if not installed, even where an earlier test imported it (and its submodules).
  for name in [m for m in sys.modules if m.startswith("onnxruntime.")] + ["onnxruntime"]:
    monkeypatch.setitem(sys.modules, name, None)
  assert cli.main(["export", "--model", trained_like_model, "--output", str(tmp_path / "st"),
                   "--onnx"]) == 2
  assert "needs onnxruntime: pip install -e '.[onnx]'" in capsys.readouterr().err
