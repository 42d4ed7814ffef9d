"""Hugging Face checkpoint directories <-> gembed's parameter tree, both directions.

A directory holds `config.json`, `model.safetensors` (or shards listed in
`model.safetensors.index.json`) and `tokenizer.json`; the sentence-transformers modules that may
sit beside them are read and written by `gembed.formats.sentence_transformers`.

The mapping between Hugging Face tensor names and gembed's parameter tree is one table
(`_bert_mapping`, `_decoder_mapping`), used in both directions, so import and export cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np
from safetensors import safe_open

from gembed.models.config import DECODER_FAMILIES, ModelConfig

SUPPORTED_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining")
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
           "silu": "silu"}


TOKENIZER_FILE = "tokenizer.json"
# Hugging Face tokenizer settings kept beside tokenizer.json so that an export loads with the
# same special tokens and casing (gembed itself reads tokenizer.json only).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class CheckpointImportError(ValueError):
  """A checkpoint directory that gembed cannot import; the message says exactly why."""


def read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_model_config(model_dir: str) -> ModelConfig:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise CheckpointImportError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
  hf = read_json(path)
  architectures = hf.get("architectures") or []
  model_type = hf.get("model_type")
  if model_type in DECODER_FAMILIES:
    return _decoder_config(hf, path)
  if model_type != "bert" or (architectures and architectures[0] not in SUPPORTED_ARCHITECTURES):
    raise CheckpointImportError(
        f"{path}: unsupported architecture {architectures[0] if architectures else model_type!r} "
        f"(model_type {model_type!r}); gembed imports: {', '.join(SUPPORTED_ARCHITECTURES)} and "
        f"model_type {', '.join(DECODER_FAMILIES)}")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointImportError(
        f"{path}: position_embedding_type {hf['position_embedding_type']!r} is not supported")
  act = hf.get("hidden_act", "gelu")
  if act not in _HF_ACT:
    raise CheckpointImportError(f"{path}: unsupported hidden_act {act!r}")
  return ModelConfig(
      family="bert",
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      hidden_act=_HF_ACT[act],
      dropout_rate=hf.get("hidden_dropout_prob", 0.1),
  )


def _decoder_config(hf: dict, path: str) -> ModelConfig:
  """Llama / Qwen2 / Gemma `config.json` -> ModelConfig; variants gembed cannot run are refused."""
  family = hf["model_type"]
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise CheckpointImportError(f"{path}: rope scaling {rope_type!r} is not supported (default only)")
  if family == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
    raise CheckpointImportError(f"{path}: Llama attention_bias / mlp_bias are not supported")
  if family == "qwen2" and hf.get("use_sliding_window"):
    raise CheckpointImportError(f"{path}: Qwen2 sliding-window attention is not supported")
  if family == "gemma":
    act = hf.get("hidden_activation") or "gelu_pytorch_tanh"
  else:
    act = hf.get("hidden_act", "silu")
  if act not in _HF_ACT:
    raise CheckpointImportError(f"{path}: unsupported activation {act!r}")
  return ModelConfig(
      family=family,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      attention_head_dim=hf.get("head_dim") or 0,
      intermediate_size=hf["intermediate_size"],
      max_position=hf["max_position_embeddings"],
      layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
      hidden_act=_HF_ACT[act],
      attention_bias=family == "qwen2",
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
      dropout_rate=0.0,
  )


# gembed activation -> Hugging Face name (the inverse of _HF_ACT; tanh-GELU has several there).
_ACT_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
_DECODER_ARCHITECTURES = {"llama": "LlamaModel", "qwen2": "Qwen2Model", "gemma": "GemmaModel"}


def hf_config_dict(config: ModelConfig) -> dict:
  """The `config.json` of the Hugging Face model with these hyperparameters (for export)."""
  if config.is_decoder:
    return _decoder_config_dict(config)
  return {
      "architectures": ["BertModel"], "model_type": "bert",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "intermediate_size": config.intermediate_size,
      "max_position_embeddings": config.max_position, "type_vocab_size": config.type_vocab_size,
      "layer_norm_eps": config.layer_norm_eps, "hidden_act": _ACT_HF[config.hidden_act],
      "hidden_dropout_prob": config.dropout_rate, "attention_probs_dropout_prob": config.dropout_rate,
      "position_embedding_type": "absolute", "pad_token_id": 0, "initializer_range": 0.02,
  }


def _decoder_config_dict(config: ModelConfig) -> dict:
  """A Llama / Qwen2 / Gemma base model that transformers runs as a bidirectional encoder.

  transformers 5.24 builds the attention mask in `masking_utils.create_causal_mask`, which returns
  a bidirectional (padding-only) mask for any model whose config has `is_causal: false`; that key
  alone made all three families equal gembed's encoder, eager and sdpa, padded or not.
  `use_bidirectional_attention` is not enough there (Llama and Qwen2 ignore it; Gemma clears only
  its attention modules' causal flag, so padded batches still got a causal mask), but Text
  Embeddings Inference reads it for Llama (and `is_causal` for Qwen2): both keys are written.
  """
  family = config.family
  if config.causal:
    raise ValueError("a causal model (config.causal) cannot be exported as an embedder: "
                     "transformers would load it bidirectionally")
  if config.attention_bias != (family == "qwen2"):
    raise ValueError(f"{family} with attention_bias={config.attention_bias} has no Hugging Face "
                     "equivalent (Qwen2 has q/k/v biases, Llama and Gemma none)")
  values = {
      "architectures": [_DECODER_ARCHITECTURES[family]], "model_type": family,
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
      "intermediate_size": config.intermediate_size,
      "max_position_embeddings": config.max_position, "rms_norm_eps": config.layer_norm_eps,
      "hidden_act": _ACT_HF[config.hidden_act],
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "attention_dropout": 0.0, "initializer_range": 0.02, "is_causal": False,
  }
  if family == "qwen2":
    values["use_sliding_window"] = False
  if family in ("llama", "gemma"):
    values["use_bidirectional_attention"] = True
  if family == "gemma":
    values["hidden_activation"] = values["hidden_act"]
  return values


@dataclasses.dataclass(frozen=True)
class _Entry:
  path: tuple[str, ...]  # path in gembed's parameter tree
  hf_key: str
  to_gembed: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _bert_mapping(config: ModelConfig) -> list[_Entry]:
  h, d, e = config.num_heads, config.head_dim, config.hidden_size
  same = (lambda x: x, lambda x: x)
  linear = (lambda w: w.T, lambda k: k.T)  # torch Linear stores (out, in)
  heads_in = (lambda w: w.T.reshape(e, h, d), lambda k: k.reshape(e, h * d).T)
  heads_bias = (lambda b: b.reshape(h, d), lambda b: b.reshape(h * d))
  heads_out = (lambda w: w.T.reshape(h, d, e), lambda k: k.reshape(h * d, e).T)

  entries = []

  def add(path, key, fns):
    entries.append(_Entry(tuple(path.split("/")), key, *fns))

  def norm(path, key):
    add(f"{path}/scale", f"{key}.weight", same)
    add(f"{path}/bias", f"{key}.bias", same)

  add("encoder/token_embed/embedding", "embeddings.word_embeddings.weight", same)
  add("encoder/position_embed/embedding", "embeddings.position_embeddings.weight", same)
  add("encoder/type_embed/embedding", "embeddings.token_type_embeddings.weight", same)
  norm("encoder/embed_norm", "embeddings.LayerNorm")
  for i in range(config.num_layers):
    ours, theirs = f"encoder/layer_{i}", f"encoder.layer.{i}"
    for name in ("query", "key", "value"):
      add(f"{ours}/attention/{name}/kernel", f"{theirs}.attention.self.{name}.weight", heads_in)
      add(f"{ours}/attention/{name}/bias", f"{theirs}.attention.self.{name}.bias", heads_bias)
    add(f"{ours}/attention/out/kernel", f"{theirs}.attention.output.dense.weight", heads_out)
    add(f"{ours}/attention/out/bias", f"{theirs}.attention.output.dense.bias", same)
    norm(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm")
    add(f"{ours}/mlp_in/kernel", f"{theirs}.intermediate.dense.weight", linear)
    add(f"{ours}/mlp_in/bias", f"{theirs}.intermediate.dense.bias", same)
    add(f"{ours}/mlp_out/kernel", f"{theirs}.output.dense.weight", linear)
    add(f"{ours}/mlp_out/bias", f"{theirs}.output.dense.bias", same)
    norm(f"{ours}/mlp_norm", f"{theirs}.output.LayerNorm")
  return entries


def _decoder_mapping(config: ModelConfig) -> list[_Entry]:
  """Llama / Qwen2 / Gemma names (`model.` prefix stripped; the LM head is not imported)."""
  e, d = config.hidden_size, config.head_dim
  same = (lambda x: x, lambda x: x)
  linear = (lambda w: w.T, lambda k: k.T)

  def heads_in(n):
    return (lambda w: w.T.reshape(e, n, d), lambda k: k.reshape(e, n * d).T)

  def heads_bias(n):
    return (lambda b: b.reshape(n, d), lambda b: b.reshape(n * d))

  heads_out = (lambda w: w.T.reshape(config.num_heads, d, e),
               lambda k: k.reshape(config.num_heads * d, e).T)
  entries = []

  def add(path, key, fns):
    entries.append(_Entry(tuple(path.split("/")), key, *fns))

  add("encoder/token_embed/embedding", "embed_tokens.weight", same)
  for i in range(config.num_layers):
    ours, theirs = f"encoder/layer_{i}", f"layers.{i}"
    add(f"{ours}/attention_norm/scale", f"{theirs}.input_layernorm.weight", same)
    for name, proj, heads in (("query", "q_proj", config.num_heads), ("key", "k_proj", config.kv_heads),
                              ("value", "v_proj", config.kv_heads)):
      add(f"{ours}/attention/{name}/kernel", f"{theirs}.self_attn.{proj}.weight", heads_in(heads))
      if config.attention_bias:
        add(f"{ours}/attention/{name}/bias", f"{theirs}.self_attn.{proj}.bias", heads_bias(heads))
    add(f"{ours}/attention/out/kernel", f"{theirs}.self_attn.o_proj.weight", heads_out)
    add(f"{ours}/mlp_norm/scale", f"{theirs}.post_attention_layernorm.weight", same)
    add(f"{ours}/mlp_gate/kernel", f"{theirs}.mlp.gate_proj.weight", linear)
    add(f"{ours}/mlp_up/kernel", f"{theirs}.mlp.up_proj.weight", linear)
    add(f"{ours}/mlp_down/kernel", f"{theirs}.mlp.down_proj.weight", linear)
  add("encoder/final_norm/scale", "norm.weight", same)
  return entries


def _mapping(config: ModelConfig) -> list[_Entry]:
  return _decoder_mapping(config) if config.is_decoder else _bert_mapping(config)


def _expected_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  import jax  # local: keep this module importable for shape checks without building a model

  from gembed.models.embedder import init_params
  abstract = jax.eval_shape(lambda: init_params(config.replace(projection_dim=0, scan_layers=False),
                                                jax.random.PRNGKey(0)))
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    flat[tuple(k.key for k in path)] = tuple(leaf.shape)
  return flat


def read_safetensors(model_dir: str, filename: str = "model.safetensors") -> dict[str, np.ndarray]:
  """All tensors of a (possibly sharded) safetensors checkpoint as float32 numpy arrays."""
  index = os.path.join(model_dir, filename + ".index.json")
  if os.path.exists(index):
    files = sorted(set(read_json(index)["weight_map"].values()))
  elif os.path.exists(os.path.join(model_dir, filename)):
    files = [filename]
  else:
    raise CheckpointImportError(
        f"{model_dir}: no {filename} or {filename}.index.json (only safetensors weights are read)")
  tensors = {}
  for name in files:
    # framework="flax" reads bfloat16 too (numpy has no bfloat16).
    with safe_open(os.path.join(model_dir, name), framework="flax") as f:
      for key in f.keys():
        tensors[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
  return tensors


def _strip_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  # BertFor* checkpoints name the encoder "bert.<...>", *ForCausalLM ones "model.<...>".
  if any(k.startswith(prefix) for k in tensors):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
  return tensors


def load_encoder_params(model_dir: str, config: ModelConfig) -> dict:
  """Encoder parameters from a Hugging Face directory, checked key by key and shape by shape."""
  tensors = _strip_prefix(read_safetensors(model_dir), "model." if config.is_decoder else "bert.")
  expected = _expected_shapes(config)
  params: dict = {}
  for entry in _mapping(config):
    if entry.hf_key not in tensors:
      raise CheckpointImportError(f"{model_dir}: missing tensor {entry.hf_key!r} "
                                  f"(needed for {'/'.join(entry.path)})")
    want_hf = entry.to_hf(np.zeros(expected[entry.path], np.float32)).shape
    got = tensors[entry.hf_key].shape
    if got != want_hf:
      raise CheckpointImportError(
          f"{model_dir}: tensor {entry.hf_key!r} has shape {got}, expected {want_hf} "
          f"(from config.json)")
    node = params
    for k in entry.path[:-1]:
      node = node.setdefault(k, {})
    node[entry.path[-1]] = entry.to_gembed(tensors[entry.hf_key])
  from gembed.models.embedder import layer_layout
  return layer_layout(params, config)


def encoder_params_to_hf(params: dict, config: ModelConfig) -> dict[str, np.ndarray]:
  """Inverse of `load_encoder_params`: gembed tree -> the tensors of the Hugging Face base model
  (BertModel, LlamaModel, ...; no `bert.` / `model.` prefix)."""
  from gembed.models.embedder import layer_layout
  params = layer_layout(params, config.replace(scan_layers=False))
  out = {}
  for entry in _mapping(config):
    node = params
    for k in entry.path:
      node = node[k]
    out[entry.hf_key] = np.ascontiguousarray(entry.to_hf(np.asarray(node, np.float32)))
  return out
