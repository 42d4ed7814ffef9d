"""`gembed bench encode`: texts/s of encoding, gembed vs sentence-transformers, and a second
gembed model (a distilled student) beside the first on the same texts."""

from __future__ import annotations

import os
import statistics
import time

from gembed.tools.bench.common import read_rows


def run(args) -> dict:
  """Encoding texts/s of `--model` (default: the shipped checkpoint) with gembed and, when it is
  a Hugging Face / sentence-transformers directory, with sentence-transformers (same batch and
  max length); with `--student`, that model's gembed texts/s and its speed-up over `--model`."""
  from gembed.encode import TextEncoder
  from gembed.formats import modeldir

  rows = read_rows(args.texts, args.n // 2 + 1)
  texts = [t for r in rows for t in (r["query"], r["positive"])][:args.n]
  model = modeldir.resolve_model_arg(args.model) if args.model else modeldir.default_model_dir()
  sides = {"gembed": _gembed_encode(TextEncoder, modeldir.load_model(model), args)}
  if args.student:
    sides["student"] = _gembed_encode(TextEncoder, modeldir.load_model(
        modeldir.resolve_model_arg(args.student)), args)
  peer_dir = str(model)
  if os.path.isfile(os.path.join(peer_dir, "config.json")):  # what sentence-transformers loads
    sides["sentence_transformers"] = _peer_encode(peer_dir, args)
  for encode in sides.values():
    encode(texts)  # compile every length bucket once / warm up
  rates = {name: [] for name in sides}
  for _ in range(args.repeats):  # alternate, so noise hits every side alike
    for name, encode in sides.items():
      start = time.perf_counter()
      encode(texts)
      rates[name].append(len(texts) / (time.perf_counter() - start))
  result = {"texts": len(texts), "batch_size": args.batch_size, "max_length": args.max_length,
            "model": str(model)}
  result.update({f"{name}_texts_per_s": statistics.median(r) for name, r in rates.items()})
  if "sentence_transformers" in sides:
    result["ratio"] = result["gembed_texts_per_s"] / result["sentence_transformers_texts_per_s"]
  if args.student:
    result["student"] = args.student
    result["student_speedup"] = result["student_texts_per_s"] / result["gembed_texts_per_s"]
  return result


def _gembed_encode(text_encoder, model, args):
  info, params = model
  return text_encoder(info, params, batch_size=args.batch_size, max_length=args.max_length).encode


def _peer_encode(model_dir: str, args):
  import torch
  from sentence_transformers import SentenceTransformer

  peer = SentenceTransformer(model_dir, device="cpu")
  peer.max_seq_length = args.max_length

  def encode(texts):
    with torch.inference_mode():
      return peer.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
  return encode
