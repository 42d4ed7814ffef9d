"""`gembed bench encode`: texts/s of encoding, gembed vs sentence-transformers."""

from __future__ import annotations

import statistics
import time

from gembed.tools.bench.common import read_rows


def run(args) -> dict:
  """Encoding texts/s, gembed vs sentence-transformers (same model, batch and max length)."""
  import torch
  from sentence_transformers import SentenceTransformer

  from gembed.encode import TextEncoder
  from gembed.formats import modeldir

  rows = read_rows(args.texts, args.n // 2 + 1)
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
