"""`gembed bench encode`: texts/s of encoding, gembed vs sentence-transformers (and, with
`--onnx DIR`, vs the export's ONNX files through onnxruntime)."""

from __future__ import annotations

import os
import statistics
import time

from gembed.tools.bench.common import read_rows


def run(args) -> dict:
  """Encoding texts/s of the same texts, batch and max length on every side; medians."""
  import torch
  from sentence_transformers import SentenceTransformer

  from gembed.encode import OnnxEncoder, TextEncoder
  from gembed.formats import modeldir, onnx_export

  rows = read_rows(args.texts, args.n // 2 + 1)
  texts = [t for r in rows for t in (r["query"], r["positive"])][:args.n]
  model_dir = args.onnx or modeldir.default_model_dir()
  info, params = modeldir.load_model(model_dir)
  ours = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  peer = SentenceTransformer(str(model_dir), device="cpu")
  peer.max_seq_length = args.max_length

  def peer_encode(batch):
    with torch.inference_mode():
      peer.encode(batch, batch_size=args.batch_size, show_progress_bar=False)

  sides = {"gembed": ours.encode, "sentence_transformers": peer_encode}
  if args.onnx:  # the ONNX files run through gembed's own tokenizer, buckets and batches
    for name, file in (("onnx_fp32", onnx_export.FP32_FILE), ("onnx_int8", onnx_export.INT8_FILE)):
      onnx = OnnxEncoder(info, os.path.join(args.onnx, onnx_export.ONNX_SUBDIR, file),
                         batch_size=args.batch_size, max_length=args.max_length)
      sides[name] = onnx.encode
  ours.encode(texts)  # compile every length bucket once
  for name, encode in sides.items():
    if name != "gembed":
      encode(texts[:args.batch_size])
  rates = {name: [] for name in sides}
  for _ in range(args.repeats):  # alternate, so noise hits every side alike
    for name, encode in sides.items():
      start = time.perf_counter()
      encode(texts)
      rates[name].append(len(texts) / (time.perf_counter() - start))
  result = {"model": str(model_dir), "texts": len(texts), "batch_size": args.batch_size,
            "max_length": args.max_length, "torch_threads": torch.get_num_threads()}
  for name in sides:
    result[f"{name}_texts_per_s"] = statistics.median(rates[name])
  result["ratio"] = result["gembed_texts_per_s"] / result["sentence_transformers_texts_per_s"]
  for name in sides:
    if name.startswith("onnx"):
      result[f"{name}_vs_gembed"] = result[f"{name}_texts_per_s"] / result["gembed_texts_per_s"]
  return result
