"""sentence-transformers model directories, read and written: the modules around the
Hugging Face transformer (gembed.formats.hf).

Reading: `modules.json` must be Transformer -> Pooling (mean over every token) -> [Dense (linear)]
-> [Normalize]; `sentence_bert_config.json` gives the max length.

Writing (`gembed export`):

    <output>/config.json, model.safetensors        BertModel, or LlamaModel / Qwen2Model /
                                                   GemmaModel configured bidirectional (the same
                                                   mapping table as import; hf.hf_config_dict)
    <output>/tokenizer.json (+ its side files)     the model's own tokenizer
    <output>/modules.json                          Transformer -> Pooling -> [Dense] -> [Normalize]
    <output>/sentence_bert_config.json             max_seq_length
    <output>/1_Pooling/config.json                 mean pooling over every token, prompt included
    <output>/2_Dense/                              the projection head (linear, no activation)
    <output>/config_sentence_transformers.json     prompts as prefixes
    <output>/gembed_export.json                    prompt templates and MRL dims, for re-import
    <output>/README.md                             model card: MRL dims and `truncate_dim`

Written with numpy + safetensors only: exporting needs neither torch nor sentence-transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

from gembed.formats import hf

EXPORT_META = "gembed_export.json"
TRANSFORMER = "sentence_transformers.models.Transformer"
# Task names of the report's prompts; each becomes a named prompt in the exported directory.
PROMPT_TASKS = ("search result", "question answering", "fact checking", "code retrieval",
                "classification", "clustering", "sentence similarity")


def prompt_prefix(template: str, **fields) -> str:
  """A gembed template whose text comes last (`...{text}`) as the literal prefix that
  sentence-transformers prepends; other templates cannot be expressed as a prefix."""
  if not template.endswith("{text}") or template.count("{text}") != 1:
    raise ValueError(f"prompt template {template!r}: sentence-transformers prompts are prefixes, "
                     "so the template must end with {text}")
  return template[: -len("{text}")].format(**fields)


def sentence_transformers_prompts(info) -> dict[str, str]:
  prompts = {}
  if info.query_prompt:
    prompts["query"] = prompt_prefix(info.query_prompt, task=info.default_task)
    for task in dict.fromkeys((info.default_task, *PROMPT_TASKS)):
      prompts[task] = prompt_prefix(info.query_prompt, task=task)
  if info.document_format:
    prompts["document"] = prompt_prefix(info.document_format, title="none")
  return prompts


@dataclasses.dataclass(frozen=True)
class SentenceTransformersInfo:
  """What a sentence-transformers model directory adds to the bare transformer."""

  max_length: int | None
  normalize: bool
  dense: tuple[np.ndarray, np.ndarray | None] | None  # (kernel (in, out), bias) of 2_Dense
  export_meta: dict | None  # EXPORT_META of a directory `gembed export` wrote: prompts, MRL dims


def sentence_transformers_dense_config(model_dir: str) -> dict | None:
  """config.json of the Dense module of a sentence-transformers directory, if it has one."""
  modules_path = os.path.join(model_dir, "modules.json")
  if not os.path.exists(modules_path):
    return None
  for module in hf.read_json(modules_path):
    if module["type"].rsplit(".", 1)[-1] == "Dense":
      return hf.read_json(os.path.join(model_dir, module.get("path", ""), "config.json"))
  return None


def read_sentence_transformers(model_dir: str) -> SentenceTransformersInfo:
  """The modules of a sentence-transformers directory (none: a bare Hugging Face directory)."""
  modules_path = os.path.join(model_dir, "modules.json")
  max_length = None
  bert_config_path = os.path.join(model_dir, "sentence_bert_config.json")
  if os.path.exists(bert_config_path):
    max_length = hf.read_json(bert_config_path).get("max_seq_length")
  tokenizer_config_path = os.path.join(model_dir, "tokenizer_config.json")
  if max_length is None and os.path.exists(tokenizer_config_path):
    # sentence-transformers >= 5 saves the length only here and reads it back from here
    max_length = hf.read_json(tokenizer_config_path).get("model_max_length")
  meta_path = os.path.join(model_dir, EXPORT_META)
  export_meta = hf.read_json(meta_path) if os.path.exists(meta_path) else None
  if not os.path.exists(modules_path):
    return SentenceTransformersInfo(max_length, normalize=False, dense=None, export_meta=export_meta)

  normalize, dense = False, None
  modules = hf.read_json(modules_path)
  for module in modules:
    kind = module["type"].rsplit(".", 1)[-1]
    path = os.path.join(model_dir, module.get("path", ""))
    if kind == "Transformer":
      continue
    if kind == "Pooling":
      pooling = hf.read_json(os.path.join(path, "config.json"))
      if "pooling_mode" in pooling:  # sentence-transformers >= 5 writes one string
        modes = [pooling["pooling_mode"]]
      else:
        modes = [k[len("pooling_mode_"):].removesuffix("_tokens")
                 for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
      if modes != ["mean"] or not pooling.get("include_prompt", True):
        raise hf.CheckpointImportError(f"{path}/config.json: pooling {modes} (include_prompt="
                                       f"{pooling.get('include_prompt', True)}) is not supported; "
                                       "gembed uses mean pooling over all tokens")
    elif kind == "Dense":
      dense_config = hf.read_json(os.path.join(path, "config.json"))
      act = dense_config.get("activation_function", "torch.nn.modules.linear.Identity")
      if not act.endswith("Identity"):
        raise hf.CheckpointImportError(f"{path}: Dense activation {act!r} is not supported "
                                       "(linear only)")
      weights = hf.read_safetensors(path)
      kernel = weights["linear.weight"].T
      bias = weights.get("linear.bias")
      if dense is not None:
        raise hf.CheckpointImportError(f"{model_dir}: more than one Dense module is not supported")
      dense = (kernel, bias)
    elif kind == "Normalize":
      normalize = True
    else:
      raise hf.CheckpointImportError(f"{modules_path}: unsupported module type {module['type']!r}")
  return SentenceTransformersInfo(max_length, normalize, dense, export_meta)


def _write_json(path: str, value) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


# Families Text Embeddings Inference runs (its candle backend, July 2026), and where; it has no
# Gemma (v1) model.
_TEI_FAMILIES = {"bert": "", "llama": " on CUDA only", "qwen2": " on CUDA only"}


def _model_card(info, prompts: dict[str, str]) -> str:
  dim, dims = info.config.embedding_dim, info.dims
  smallest = dims[-1]
  lines = [
      "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
      "tags: [sentence-transformers, feature-extraction, gembed, matryoshka]", "---", "",
      "# Text embedding model trained with gembed", "",
      f"A {info.config.num_layers}-layer bidirectional encoder with mean pooling"
      + (f" and a linear projection to {dim} dimensions" if info.config.projection_dim else "")
      + f", {'L2-normalised ' if info.normalize else ''}{dim}-dimensional embeddings, "
      f"max {info.max_length} tokens.", "",
      "## Matryoshka dimensions", "",
      "It was trained with Matryoshka (MRL) losses, so the first *d* values of an embedding are an "
      f"embedding of their own for d in: **{', '.join(map(str, dims))}**. Choose the smallest "
      "dimension whose quality your task tolerates: storage and search cost scale with d. "
      "`truncate_dim` keeps the first d values (cosine similarity re-normalises them):", "",
      "```python", "from sentence_transformers import SentenceTransformer", "",
      f'model = SentenceTransformer("path/to/this/directory", truncate_dim={smallest})',
  ]
  if "query" in prompts:
    lines += ['queries = model.encode(["how do I sort a list?"], prompt_name="query")',
              'docs = model.encode(["sorted(iterable) returns a new sorted list."], '
              'prompt_name="document")' if "document" in prompts else
              'docs = model.encode(["sorted(iterable) returns a new sorted list."])']
  else:
    lines += ['embeddings = model.encode(["how do I sort a list?", "sorted() returns a new list"])']
  lines += ["```", ""]
  if info.config.family in _TEI_FAMILIES:
    lines += ["Text Embeddings Inference reads this directory as it is (mean pooling, the Dense "
              f"head, prompts){_TEI_FAMILIES[info.config.family]}: `\"dimensions\": d` in a "
              "request keeps the first d values, `\"prompt_name\"` selects a prompt.", ""]
  if prompts:
    lines += ["## Prompts", "",
              "Queries carry a task prompt, documents a title/text format, as in training "
              "(`prompt_name=` selects one):", ""]
    lines += [f"- `{name}`: `{prefix!r}`" for name, prefix in prompts.items()]
    lines += [""]
  lines += ["Also loadable by gembed: `gembed encode --model path/to/this/directory ...`.", ""]
  return "\n".join(lines)


def write_sentence_transformers(info, params: dict, output: str) -> str:
  """Writes the sentence-transformers directory of a model (`ModelInfo`, params) to `output`."""
  config = info.config
  hf_config = hf.hf_config_dict(config)  # first: it refuses configs transformers cannot express
  prompts = sentence_transformers_prompts(info)
  os.makedirs(output, exist_ok=True)

  save_file(hf.encoder_params_to_hf(params, config), os.path.join(output, "model.safetensors"),
            metadata={"format": "pt"})
  _write_json(os.path.join(output, "config.json"), hf_config)
  tokenizer_dir = os.path.dirname(info.tokenizer_file)
  for name in (hf.TOKENIZER_FILE, *hf.TOKENIZER_SIDE_FILES):
    source = os.path.join(tokenizer_dir, name)
    if os.path.exists(source):
      shutil.copyfile(source, os.path.join(output, name))

  modules = [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  os.makedirs(os.path.join(output, "1_Pooling"), exist_ok=True)
  _write_json(os.path.join(output, "1_Pooling", "config.json"), {
      "word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": False,
      "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True})
  if config.projection_dim:
    dense_dir = os.path.join(output, "2_Dense")
    os.makedirs(dense_dir, exist_ok=True)
    head = params["projection"]
    tensors = {"linear.weight": np.ascontiguousarray(np.asarray(head["kernel"], np.float32).T)}
    if config.projection_bias:
      tensors["linear.bias"] = np.asarray(head["bias"], np.float32)
    save_file(tensors, os.path.join(dense_dir, "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(dense_dir, "config.json"), {
        "in_features": config.hidden_size, "out_features": config.projection_dim,
        "bias": config.projection_bias,
        "activation_function": "torch.nn.modules.linear.Identity"})
    modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
  if info.normalize:
    modules.append({"idx": len(modules), "name": str(len(modules)),
                    "path": f"{len(modules)}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  _write_json(os.path.join(output, "modules.json"), modules)
  _write_json(os.path.join(output, "sentence_bert_config.json"),
              {"max_seq_length": info.max_length, "do_lower_case": False})
  _write_json(os.path.join(output, "config_sentence_transformers.json"), {
      "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})
  _write_json(os.path.join(output, EXPORT_META), {
      "query_prompt": info.query_prompt, "document_format": info.document_format,
      "mrl_dims": list(info.mrl_dims), "default_task": info.default_task})
  with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as f:
    f.write(_model_card(info, prompts))
  return output
