"""`gembed bench encode`: texts/s of encoding, gembed vs sentence-transformers; with `--onnx DIR`
also the export's ONNX files through onnxruntime, with `--student M` a second gembed model (a
distilled student) on the same texts."""

from __future__ import annotations

import os
import statistics
import time

from gembed.tools.bench.common import read_rows


def run(args) -> dict:
  """Encoding texts/s of the same texts, batch and max length on every side; medians. The model
  is `--onnx DIR`'s, else `--model` (default: the shipped checkpoint); sentence-transformers runs
  it when it is a Hugging Face / sentence-transformers directory."""
  from gembed.encode import OnnxEncoder, TextEncoder
  from gembed.formats import modeldir, onnx_export

  rows = read_rows(args.texts, args.n // 2 + 1)
  texts = [t for r in rows for t in (r["query"], r["positive"])][:args.n]
  model = args.onnx or (modeldir.resolve_model_arg(args.model) if args.model
                        else modeldir.default_model_dir())
  info, params = modeldir.load_model(str(model))
  sides = {"gembed": _gembed_encode(TextEncoder, info, params, args)}
  if os.path.isfile(os.path.join(str(model), "config.json")):  # what sentence-transformers loads
    sides["sentence_transformers"] = _peer_encode(str(model), args)
  if args.onnx:  # the ONNX files run through gembed's own tokenizer, buckets and batches
    for name, file in (("onnx_fp32", onnx_export.FP32_FILE), ("onnx_int8", onnx_export.INT8_FILE)):
      sides[name] = OnnxEncoder(info, os.path.join(args.onnx, onnx_export.ONNX_SUBDIR, file),
                                batch_size=args.batch_size, max_length=args.max_length).encode
  if args.student:
    sides["student"] = _gembed_encode(
        TextEncoder, *modeldir.load_model(modeldir.resolve_model_arg(args.student)), args)
  for encode in sides.values():
    encode(texts)  # compile every length bucket once / warm up
  rates = {name: [] for name in sides}
  for _ in range(args.repeats):  # alternate, so noise hits every side alike
    for name, encode in sides.items():
      start = time.perf_counter()
      encode(texts)
      rates[name].append(len(texts) / (time.perf_counter() - start))
  result = {"model": str(model), "texts": len(texts), "batch_size": args.batch_size,
            "max_length": args.max_length}
  for name in sides:
    result[f"{name}_texts_per_s"] = statistics.median(rates[name])
  if "sentence_transformers" in sides:
    result["ratio"] = result["gembed_texts_per_s"] / result["sentence_transformers_texts_per_s"]
  for name in sides:
    if name.startswith("onnx"):
      result[f"{name}_vs_gembed"] = result[f"{name}_texts_per_s"] / result["gembed_texts_per_s"]
  if args.student:
    result["student"] = args.student
    result["student_speedup"] = result["student_texts_per_s"] / result["gembed_texts_per_s"]
  return result


def _gembed_encode(text_encoder, info, params, args):
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
