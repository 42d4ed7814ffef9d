"""What the benchmarks share: their default data, reading rows, the model, and gembed's
training setup (the trainer's own pieces, TensorFlow-free)."""

from __future__ import annotations

import os

import numpy as np

DEFAULT_TEXTS = os.path.join("..", "shared", "data", "training", "medquad-pairs.jsonl")
DEFAULT_TRIPLES = os.path.join("..", "shared", "data", "training", "snli-triples.jsonl")
DEFAULT_PAIRS = os.path.join("..", "shared", "data", "training", "quora-pairs.jsonl")


def read_rows(path: str, n: int) -> list[dict]:
  from gembed.textio import iter_jsonl
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: pass --texts/--triples (JSONL with query/positive)")
  rows = []
  for _, row in iter_jsonl(path):
    rows.append(row)
    if len(rows) >= n:
      break
  return rows


def model_dir(args) -> str:
  from gembed.formats import modeldir
  return modeldir.resolve_model_arg(args.model) if args.model else modeldir.default_model_dir()


def mrl_dims(model_dir: str) -> list[int]:
  """The benchmarks' head width and MRL dims: the encoder's width, its half and quarter
  (MiniLM: 384, 192, 96)."""
  from gembed.formats import modeldir
  width = modeldir.read_model_config(model_dir).hidden_size
  return [width, width // 2, width // 4]


BUCKETS = (16, 32, 64, 128)  # the trainer's length buckets (configs/finetune.py)


def train_setup(model_dir, rows, batch_size, max_length, dims, grad_cache_chunk=0,
                buckets=BUCKETS, dropout=0.1, length_groups=1):
  """The trainer's own pieces (gembed.state): imported MiniLM + projection, sharded state, the
  jitted step. TensorFlow-free: batches come from the `tokenizers` path, not SeqIO."""
  import jax
  import ml_collections

  from gembed import batch as batch_schema
  from gembed import flops, sharding
  from gembed.formats import modeldir
  from gembed.optim import make_optimizer
  from gembed.state import abstract_train_state, init_train_state, initial_params, jit_train_step
  from gembed.tokenizer import Tokenizer

  info, params = modeldir.load_model(model_dir)
  config = info.config.replace(projection_dim=dims[0], dropout_rate=dropout)
  params = initial_params(info.config, params, config, jax.random.PRNGKey(0))
  mesh = sharding.make_mesh("data")
  optim = ml_collections.ConfigDict(dict(name="adamw", learning_rate=2e-5, warmup_steps=10,
                                         total_steps=1000, decay="linear", end_factor=0.0,
                                         weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
  optimizer, schedule = make_optimizer(optim)
  abstract = abstract_train_state(config, optimizer, mesh)
  state = init_train_state(params, optimizer, jax.random.PRNGKey(1), abstract)
  run = ml_collections.ConfigDict({
      "train": {"grad_cache": bool(grad_cache_chunk), "grad_cache_chunk": grad_cache_chunk or 1,
                "grad_cache_tokens": 0},
      "data": {"global_batch_size": batch_size, "length_groups": length_groups, "num_negatives": 1},
      "loss": {"temperature": 0.05, "mrl_dims": tuple(dims), "mrl_weights": (),
               "decoupled": False, "ring": False, "prefix_distill": 0.0,
               "contrastive_weight": 1.0},
      "distill": {"teacher": "", "teacher_embeddings": "", "embedding_weight": 0.0, "embedding_loss": "cosine",
                  "similarity_weight": 0.0}})
  step = jit_train_step(run, config, optimizer, schedule, abstract, mesh)
  # Each batch is cut to the bucket of its longest query / document, as data.length_buckets does,
  # or sorted by its rows' longest text into length groups, each cut to its own bucket.
  tok = Tokenizer(info.tokenizer_file, max_length, buckets=tuple(buckets))
  batches = []
  for start in range(0, len(rows) - batch_size + 1, batch_size):
    texts = {k: tok.encode([r[k] for r in rows[start:start + batch_size]])[0]
             for k in ("query", "positive", "negative")}
    longest = [max(len(t[i]) for t in texts.values()) for i in range(batch_size)]
    order = np.argsort(longest, kind="stable") if length_groups > 1 else np.arange(batch_size)
    groups = []
    for part in np.split(order, length_groups):
      q, p, n = ([texts[k][i] for i in part] for k in ("query", "positive", "negative"))
      doc_length = tok.bucket(max(len(x) for x in p + n))
      q, p, n = tok.pad(q), tok.pad(p, length=doc_length), tok.pad(n, length=doc_length)
      groups.append({
          "query_ids": q.input_ids, "query_mask": q.attention_mask,
          "positive_ids": p.input_ids, "positive_mask": p.attention_mask,
          "negative_ids": n.input_ids[:, None], "negative_mask": n.attention_mask[:, None],
          "negative_valid": np.ones((len(part), 1), bool),
          "query_key": (part + start).astype(np.int32),
          "positive_key": (part + start + 10**6).astype(np.int32)})
    batches.append(batch_schema.from_groups(groups))
  batches = [jax.device_put(b, sharding.batch_sharding(mesh)) for b in batches]
  step_flops = [sum(flops.train_flops_per_step(config, batch_size // length_groups, q, d, 1)
                    for q, d in batch_schema.text_lengths(b)) for b in batches]
  peak = flops.peak_flops_per_device() * jax.device_count()
  return state, step, batches, step_flops, peak
