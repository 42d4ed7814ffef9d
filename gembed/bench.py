"""Benchmarks against the peer (sentence-transformers on PyTorch) in the same run.

    gembed bench encode [--texts FILE] [--n 2048] [--batch-size 64] [--max-length 128]
    gembed bench train  [--triples FILE] [--batch-size 64] [--max-length 128] [--steps 6]
    gembed bench data   [--triples FILE] [--batch-size 64] [--max-length 128] [--batches 40]
    gembed bench memory [--batches 256 1024 4096] [--chunk 32] [--run-batch 1024]
    gembed bench mine   [--pairs FILE] [--top-k 30] [--margin-ratio 0.95]   (peer: + `datasets`)

`train --no-peer` needs neither torch nor TensorFlow (an accelerator image with JAX only).

Each prints both sides, their ratio and medians over repeats (these machines are noisy).
The peer needs the `test` extra (torch + sentence-transformers).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np

DEFAULT_TEXTS = os.path.join("..", "shared", "data", "training", "medquad-pairs.jsonl")
DEFAULT_TRIPLES = os.path.join("..", "shared", "data", "training", "snli-triples.jsonl")


def _read_rows(path: str, n: int) -> list[dict]:
  from gembed.textio import iter_jsonl
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: pass --texts/--triples (JSONL with query/positive)")
  rows = []
  for _, row in iter_jsonl(path):
    rows.append(row)
    if len(rows) >= n:
      break
  return rows


def bench_encode(args) -> dict:
  import torch
  from sentence_transformers import SentenceTransformer

  from gembed import modeldir
  from gembed.encode import TextEncoder

  rows = _read_rows(args.texts, args.n // 2 + 1)
  texts = [t for r in rows for t in (r["query"], r["positive"])][:args.n]
  model_dir = modeldir.default_model_dir()
  info, params = modeldir.load_model(model_dir)
  ours = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  peer = SentenceTransformer(str(model_dir), device="cpu")
  peer.max_seq_length = args.max_length
  ours.encode(texts)  # compile every length bucket once
  peer.encode(texts[:args.batch_size], batch_size=args.batch_size, show_progress_bar=False)
  ours_rates, peer_rates = [], []
  for _ in range(args.repeats):  # alternate, so noise hits both sides alike
    start = time.perf_counter()
    ours.encode(texts)
    ours_rates.append(len(texts) / (time.perf_counter() - start))
    start = time.perf_counter()
    with torch.inference_mode():
      peer.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
    peer_rates.append(len(texts) / (time.perf_counter() - start))
  result = {"texts": len(texts), "batch_size": args.batch_size, "max_length": args.max_length,
            "gembed_texts_per_s": statistics.median(ours_rates),
            "sentence_transformers_texts_per_s": statistics.median(peer_rates),
            "torch_threads": torch.get_num_threads()}
  result["ratio"] = result["gembed_texts_per_s"] / result["sentence_transformers_texts_per_s"]
  return result


def _gembed_train_setup(model_dir, rows, batch_size, max_length, dims, grad_cache_chunk=0):
  """The trainer's own pieces: imported MiniLM + projection, sharded state, jitted step.
  TensorFlow-free: batches come from the `tokenizers` path, not SeqIO."""
  import functools

  import jax
  import ml_collections

  from gembed import flops, modeldir, sharding
  from gembed.models import embedder
  from gembed.optim import make_optimizer
  from gembed.steps import LossConfig, train_step
  from gembed.tokenizer import Tokenizer
  from gembed.train import init_train_state, initial_params

  info, params = modeldir.load_model(model_dir)
  config = info.config.replace(projection_dim=dims[0], dropout_rate=0.1)
  params = initial_params(info.config, params, config, jax.random.PRNGKey(0))
  mesh = sharding.make_mesh("data")
  params = jax.device_put(params, sharding.param_shardings(embedder.logical_axes(config), params, mesh))
  optim = ml_collections.ConfigDict(dict(name="adamw", learning_rate=2e-5, warmup_steps=10,
                                         total_steps=1000, decay="linear", end_factor=0.0,
                                         weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
  optimizer, schedule = make_optimizer(optim)
  state = init_train_state(params, optimizer, jax.random.PRNGKey(1), mesh)
  state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step = jax.jit(functools.partial(train_step, model_config=config,
                                   loss_config=LossConfig(temperature=0.05, dims=tuple(dims)),
                                   optimizer=optimizer, schedule=schedule,
                                   grad_cache_chunk=grad_cache_chunk),
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)), donate_argnums=(0,))
  # The trainer's length buckets (configs/finetune.py): each batch is cut to the bucket of its
  # longest query / document, as data.length_buckets does.
  tok = Tokenizer(info.tokenizer_file, max_length, buckets=(16, 32, 64, 128))
  batches = []
  for start in range(0, len(rows) - batch_size + 1, batch_size):
    chunk = rows[start:start + batch_size]
    queries = tok.encode([r["query"] for r in chunk])[0]
    positives = tok.encode([r["positive"] for r in chunk])[0]
    negatives = tok.encode([r["negative"] for r in chunk])[0]
    doc_length = tok.bucket(max(len(x) for x in positives + negatives))
    q = tok.pad(queries)
    p = tok.pad(positives, length=doc_length)
    n = tok.pad(negatives, length=doc_length)
    batches.append({
        "query_ids": q.input_ids, "query_mask": q.attention_mask,
        "positive_ids": p.input_ids, "positive_mask": p.attention_mask,
        "negative_ids": n.input_ids[:, None], "negative_mask": n.attention_mask[:, None],
        "negative_valid": np.ones((batch_size, 1), bool),
        "query_key": np.arange(batch_size, dtype=np.int32) + start,
        "positive_key": np.arange(batch_size, dtype=np.int32) + start + 10**6})
  batches = [jax.device_put(b, sharding.batch_sharding(mesh)) for b in batches]
  step_flops = [flops.train_flops_per_step(config, batch_size, b["query_ids"].shape[1],
                                           b["positive_ids"].shape[1], 1) for b in batches]
  peak = flops.peak_flops_per_device() * jax.device_count()
  return state, step, batches, step_flops, peak


def _model_dir(args) -> str:
  from gembed import modeldir
  from gembed.modeldir import resolve_model_arg
  return resolve_model_arg(args.model) if args.model else modeldir.default_model_dir()


def bench_train(args) -> dict:
  import jax

  dims = [384, 192, 96]
  rows = _read_rows(args.triples, args.batch_size * (args.steps + 1))
  state, step, batches, step_flops, peak = _gembed_train_setup(
      _model_dir(args), rows, args.batch_size, args.max_length, dims, args.grad_cache_chunk)
  for batch in batches:  # compile every bucket pair once, outside the timing
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  result = {"batch_size": args.batch_size, "max_length": args.max_length, "mrl_dims": dims,
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "grad_cache_chunk": args.grad_cache_chunk,
            "gembed_padding": "length buckets (16, 32, 64, 128) per batch"}
  if args.no_peer:  # gembed alone (an accelerator image without torch)
    times, achieved = [], []
    for i in range(1, len(batches)):
      start = time.perf_counter()
      state, metrics = step(state, batches[i])
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
      achieved.append(step_flops[i] / times[-1])
    return {**result, "steps_timed": len(times),
            "gembed_examples_per_s": args.batch_size / statistics.median(times),
            "gembed_mfu": statistics.median(achieved) / peak if peak else None}

  import torch
  from sentence_transformers import SentenceTransformer, losses, models

  device = "cuda" if torch.cuda.is_available() else "cpu"
  base = SentenceTransformer(_model_dir(args), device=device)
  base.max_seq_length = args.max_length
  dense = models.Dense(384, 384, activation_function=torch.nn.Identity())
  peer = SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device=device)
  peer.train()
  loss_fn = losses.MatryoshkaLoss(peer, losses.MultipleNegativesRankingLoss(peer, scale=20.0), dims)
  opt = torch.optim.AdamW(peer.parameters(), lr=2e-5)

  def peer_step(chunk):
    # sentence-transformers 6.2's preprocess output holds non-tensor entries too
    features = [{name: t.to(device) if torch.is_tensor(t) else t
                 for name, t in peer.preprocess([r[k] for r in chunk]).items()}
                for k in ("query", "positive", "negative")]
    loss = loss_fn(features, None)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()  # time the work, not the launch

  chunks = [rows[i * args.batch_size:(i + 1) * args.batch_size] for i in range(len(batches))]
  peer_step(chunks[0])  # warm-up
  ours_times, peer_times, ours_flops = [], [], []
  for i in range(1, len(batches)):  # same real batches, alternating sides
    start = time.perf_counter()
    state, metrics = step(state, batches[i])
    jax.block_until_ready(metrics)
    ours_times.append(time.perf_counter() - start)
    ours_flops.append(step_flops[i] / ours_times[-1])
    start = time.perf_counter()
    peer_step(chunks[i])
    peer_times.append(time.perf_counter() - start)
  ours = args.batch_size / statistics.median(ours_times)
  theirs = args.batch_size / statistics.median(peer_times)
  return {**result, "steps_timed": len(ours_times), "gembed_examples_per_s": ours,
          "sentence_transformers_examples_per_s": theirs, "ratio": ours / theirs,
          "gembed_mfu": statistics.median(ours_flops) / peak if peak else None,
          "peer_padding": "dynamic (longest text in the batch)"}


def bench_memory(args) -> dict:
  """Compiled per-device temporary memory of the plain and the GradCache step over global batch
  sizes (XLA's buffer assignment, `memory_analysis()`), and measured throughput of both."""
  import jax

  dims = [384, 192, 96]
  rows = _read_rows(args.triples, max(args.run_batch, args.batch_size) * (args.run_steps + 1))
  result = {"max_length": args.max_length, "mrl_dims": dims, "hard_negatives": 1,
            "grad_cache_chunk": args.chunk, "device": jax.devices()[0].device_kind,
            "temp_gib": {}, "examples_per_s": {}}
  for name, chunk in (("plain", 0), ("grad_cache", args.chunk)):
    run_batch = args.batch_size if chunk == 0 else args.run_batch
    state, step, batches, _, _ = _gembed_train_setup(_model_dir(args), rows, run_batch,
                                                     args.max_length, dims, chunk)
    result["temp_gib"][name] = {}
    for b in args.batches:
      shapes = {"query_ids": (b, args.max_length), "query_mask": (b, args.max_length),
                "positive_ids": (b, args.max_length), "positive_mask": (b, args.max_length),
                "negative_ids": (b, 1, args.max_length), "negative_mask": (b, 1, args.max_length),
                "negative_valid": (b, 1), "query_key": (b,), "positive_key": (b,)}
      abstract = {k: jax.ShapeDtypeStruct(v, bool if k == "negative_valid" else np.int32)
                  for k, v in shapes.items()}
      temp = step.lower(state, abstract).compile().memory_analysis().temp_size_in_bytes
      result["temp_gib"][name][b] = temp / 2 ** 30
      print(f"{name} batch {b}: temp {temp / 2 ** 30:.2f} GiB", flush=True)
    times = []
    for batch in batches[:args.run_steps + 1]:  # the first call compiles
      start = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    result["examples_per_s"][f"{name}@{run_batch}"] = run_batch / statistics.median(times[1:])
    print(f"{name} batch {run_batch}: {result['examples_per_s'][f'{name}@{run_batch}']:.2f} "
          "examples/s", flush=True)
  return result


def bench_data(args) -> dict:
  """Tokenisation + batching throughput of the SeqIO pipeline, in texts/s."""
  from gembed import modeldir
  from gembed.data import pipeline

  info, _ = modeldir.load_model(modeldir.default_model_dir())
  spec = pipeline.TaskSpec("bench", (os.path.abspath(args.triples),))
  task = pipeline.register_task(spec, tokenizer_file=info.tokenizer_file, query_length=args.max_length,
                                document_length=args.max_length, num_negatives=1,
                                query_prompt="task: {task} | query: {text}",
                                document_format="title: {title} | text: {text}")
  ds = pipeline.make_mixture([task], np.ones(1), host_batch_size=args.batch_size, seed=0,
                             shard_index=0, num_shards=1, shuffle_buffer=1000,
                             query_length=args.max_length, document_length=args.max_length,
                             num_negatives=1, pad_id=0)
  it = iter(ds)
  for _ in range(3):
    next(it)
  rates = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.batches):
      next(it)
    rates.append(args.batches * args.batch_size * 3 / (time.perf_counter() - start))
  return {"batch_size": args.batch_size, "texts_per_batch": 3 * args.batch_size,
          "max_length": args.max_length, "texts_per_s": statistics.median(rates),
          "batches_per_s": statistics.median(rates) / (3 * args.batch_size)}


def bench_mine(args) -> dict:
  """Hard-negative mining (window method, no LLM) vs sentence-transformers' mine_hard_negatives
  with the same model, batch, length, candidate range and relative margin, and where gembed's
  time goes (embedding vs search vs selection)."""
  import tempfile

  import torch
  from datasets import Dataset
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.util import mine_hard_negatives

  from gembed import modeldir
  from gembed.encode import TextEncoder
  from gembed.llmdata import mine
  from gembed.llmdata.neighbours import embed_to_file, top_k_neighbours

  rows = _read_rows(args.pairs, args.n)
  model_dir = modeldir.default_model_dir()
  info, params = modeldir.load_model(model_dir)
  ours = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  peer = SentenceTransformer(str(model_dir), device="cpu")
  peer.max_seq_length = args.max_length
  config = mine.MiningConfig(num_negatives=1, top_k=args.top_k, rank_window=(0, args.top_k),
                             margin_ratio=args.margin_ratio)
  def gembed_run():
    work = tempfile.mkdtemp()  # fresh: embed_to_file would resume from an earlier run's files
    times = {}
    start = time.perf_counter()
    corpus, positive_ids = mine.build_corpus(rows)
    queries, row_query, exclude = mine.query_groups(rows, positive_ids, corpus)
    t = time.perf_counter()
    corpus_emb = embed_to_file(ours, corpus.texts, os.path.join(work, "c.npy"), progress=False)
    query_emb = embed_to_file(ours, queries, os.path.join(work, "q.npy"), progress=False)
    times["embed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    scores, ids = top_k_neighbours(query_emb, corpus_emb, args.top_k, exclude, progress=False)
    times["search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    positive = np.einsum("nd,nd->n", query_emb[row_query], corpus_emb[positive_ids])
    chosen = []
    for i, q in enumerate(row_query):
      ranks = mine.select_window(ids[q], scores[q], float(positive[i]), config)
      chosen.append(corpus.texts[ids[q][ranks[0]]] if ranks else None)
    times["select_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start
    return times, chosen

  dataset = Dataset.from_dict({"anchor": [r["query"] for r in rows],
                               "positive": [r["positive"] for r in rows]})

  def peer_run():
    start = time.perf_counter()
    with torch.inference_mode():
      out = mine_hard_negatives(dataset, peer, range_max=args.top_k,
                                relative_margin=1 - args.margin_ratio, num_negatives=1,
                                sampling_strategy="top", batch_size=args.batch_size,
                                use_faiss=False, verbose=False)
    return time.perf_counter() - start, out

  gembed_run()  # compile every shape once
  ours_runs, peer_times = [], []
  for _ in range(args.repeats):  # alternate, so noise hits both sides alike
    ours_runs.append(gembed_run())
    peer_time, peer_out = peer_run()
    peer_times.append(peer_time)
  chosen = ours_runs[-1][1]
  peer_negative = {(r["anchor"], r["positive"]): r["negative"] for r in peer_out}
  both = [(c, peer_negative.get((r["query"], r["positive"]))) for r, c in zip(rows, chosen)]
  agree = sum(a == b for a, b in both if a is not None and b is not None)
  comparable = sum(a is not None and b is not None for a, b in both)
  result = {"rows": len(rows), "batch_size": args.batch_size, "max_length": args.max_length,
            "top_k": args.top_k, "margin_ratio": args.margin_ratio,
            "gembed_s": statistics.median(r[0]["total_s"] for r in ours_runs),
            "sentence_transformers_s": statistics.median(peer_times),
            "gembed_breakdown_s": {k: round(statistics.median(r[0][k] for r in ours_runs), 3)
                                   for k in ("embed_s", "search_s", "select_s")},
            "rows_with_negative": {"gembed": sum(c is not None for c in chosen),
                                   "sentence_transformers": len(peer_out)},
            "same_negative_where_both_found_one": agree / max(comparable, 1),
            "torch_threads": torch.get_num_threads()}
  result["speedup"] = result["sentence_transformers_s"] / result["gembed_s"]
  return result


def add_parser(sub) -> None:
  bench = sub.add_parser("bench", help="benchmarks against sentence-transformers (needs the test extra)")
  kinds = bench.add_subparsers(dest="bench", required=True)
  enc = kinds.add_parser("encode", help="encoding texts/s, gembed vs sentence-transformers")
  enc.add_argument("--texts", default=DEFAULT_TEXTS, help="JSONL with query/positive fields")
  enc.add_argument("--n", type=int, default=2048)
  enc.add_argument("--repeats", type=int, default=3)
  enc.set_defaults(bench_fn=bench_encode)
  train = kinds.add_parser("train", help="training examples/s, gembed vs sentence-transformers")
  train.add_argument("--triples", default=DEFAULT_TRIPLES)
  train.add_argument("--steps", type=int, default=6)
  train.add_argument("--model", default=None, help="model directory (default: the shipped "
                     "all-MiniLM-L6-v2)")
  train.add_argument("--grad-cache-chunk", type=int, default=0, help="GradCache chunk rows (0: plain)")
  train.add_argument("--no-peer", action="store_true",
                     help="gembed only (no torch / sentence-transformers needed)")
  train.set_defaults(bench_fn=bench_train)
  memory = kinds.add_parser("memory", help="compiled memory and throughput, plain vs GradCache")
  memory.add_argument("--triples", default=DEFAULT_TRIPLES)
  memory.add_argument("--model", default=None)
  memory.add_argument("--batches", type=int, nargs="*", default=[256, 1024, 4096],
                      help="global batch sizes (triples) whose compiled memory is reported")
  memory.add_argument("--chunk", type=int, default=32, help="GradCache chunk rows")
  memory.add_argument("--run-batch", type=int, default=1024, help="batch of the timed GradCache run")
  memory.add_argument("--run-steps", type=int, default=2)
  memory.set_defaults(bench_fn=bench_memory)
  data = kinds.add_parser("data", help="SeqIO tokenisation + batching texts/s")
  data.add_argument("--triples", default=DEFAULT_TRIPLES)
  data.add_argument("--batches", type=int, default=20)
  data.add_argument("--repeats", type=int, default=3)
  data.set_defaults(bench_fn=bench_data)
  mine_p = kinds.add_parser("mine", help="hard-negative mining vs sentence-transformers' "
                           "mine_hard_negatives (the peer also needs `pip install datasets`)")
  mine_p.add_argument("--pairs", default=os.path.join("..", "shared", "data", "training",
                                                      "quora-pairs.jsonl"))
  mine_p.add_argument("--n", type=int, default=100000, help="rows read from --pairs")
  mine_p.add_argument("--top-k", type=int, default=30)
  mine_p.add_argument("--margin-ratio", type=float, default=0.95)
  mine_p.add_argument("--repeats", type=int, default=3)
  mine_p.set_defaults(bench_fn=bench_mine)
  kinds.add_parser("quality", help="the recipe vs sentence-transformers on held-out sets: "
                   "gembed bench quality --config configs/recipe.py --workdir DIR "
                   "[--config.a.b=v ...] (gembed/quality.py)")
  for p in (enc, train, memory, data, mine_p):
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)


PEER_PACKAGES = ("torch", "sentence_transformers", "transformers", "datasets")


def run(args) -> int:
  try:
    result = args.bench_fn(args)
  except ModuleNotFoundError as e:
    if e.name not in PEER_PACKAGES:
      raise
    # The main install has no PyTorch; the peer side lives in the test extra.
    hint = " (or --no-peer: gembed alone)" if args.bench == "train" else ""
    print(f"gembed bench {args.bench}: the sentence-transformers side needs {e.name}: "
          f"pip install -e '.[test]'{hint}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2))
  return 0
