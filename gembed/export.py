"""`gembed export`: any gembed model -> a sentence-transformers model directory.

    <output>/config.json, model.safetensors        BertModel (the same mapping table as import)
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

import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

from gembed import modeldir
from gembed.models import hf_import

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


def sentence_transformers_prompts(info: modeldir.ModelInfo) -> dict[str, str]:
  prompts = {}
  if info.query_prompt:
    prompts["query"] = prompt_prefix(info.query_prompt, task=info.default_task)
    for task in dict.fromkeys((info.default_task, *PROMPT_TASKS)):
      prompts[task] = prompt_prefix(info.query_prompt, task=task)
  if info.document_format:
    prompts["document"] = prompt_prefix(info.document_format, title="none")
  return prompts


def _write_json(path: str, value) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def _model_card(info: modeldir.ModelInfo, prompts: dict[str, str]) -> str:
  dim = info.config.embedding_dim
  dims = sorted(set(info.mrl_dims) | {dim}, reverse=True)
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
  if prompts:
    lines += ["## Prompts", "",
              "Queries carry a task prompt, documents a title/text format, as in training "
              "(`prompt_name=` selects one):", ""]
    lines += [f"- `{name}`: `{prefix!r}`" for name, prefix in prompts.items()]
    lines += [""]
  lines += ["Also loadable by gembed: `gembed encode --model path/to/this/directory ...`.", ""]
  return "\n".join(lines)


def export_sentence_transformers(model: str, output: str) -> str:
  """Writes the sentence-transformers directory of `model` (any --model spec) to `output`."""
  info, params = modeldir.load_model(model)
  config = info.config
  if config.family != "bert":
    raise ValueError(f"{model}: export supports the bert family, not {config.family!r}")
  prompts = sentence_transformers_prompts(info)
  os.makedirs(output, exist_ok=True)

  save_file(hf_import.encoder_params_to_hf(params, config), os.path.join(output, "model.safetensors"),
            metadata={"format": "pt"})
  _write_json(os.path.join(output, "config.json"), hf_import.hf_config_dict(config))
  tokenizer_dir = os.path.dirname(info.tokenizer_file)
  for name in (modeldir.TOKENIZER_FILE, *modeldir.TOKENIZER_SIDE_FILES):
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
