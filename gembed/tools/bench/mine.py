"""`gembed bench mine`: hard-negative mining vs sentence-transformers' mine_hard_negatives."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from gembed.tools.bench.common import read_rows


def run(args) -> dict:
  """Hard-negative mining (window method, no LLM) vs sentence-transformers' mine_hard_negatives
  with the same model, batch, length, candidate range and relative margin, and where gembed's
  time goes (embedding vs search vs selection)."""
  import tempfile

  import torch
  from datasets import Dataset
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.util import mine_hard_negatives

  from gembed.encode import TextEncoder
  from gembed.formats import modeldir
  from gembed.llmdata import mine
  from gembed.llmdata.neighbours import embed_to_file
  from gembed.vectors import top_k

  rows = read_rows(args.pairs, args.n)
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
    scores, ids = top_k(query_emb, corpus_emb, args.top_k, exclude)
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
