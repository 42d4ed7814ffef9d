"""`gembed encode`: texts in, one embedding row per text out (.npy)."""

from __future__ import annotations

import os
import sys


def add_parsers(sub) -> None:
  enc = sub.add_parser("encode", help="embed texts (.txt: one per line; .jsonl: a 'text' field)")
  enc.add_argument("--model", required=True, help="model directory, workdir[@best|@STEP], or "
                   "all-MiniLM-L6-v2 (the shipped checkpoint)")
  enc.add_argument("--adapter", default=None, help="an adapter directory (a LoRA run's "
                   "WORKDIR/adapter) applied to --model, the base it was trained on")
  enc.add_argument("--input", required=True)
  enc.add_argument("--output", required=True, help=".npy file, one row per input line")
  enc.add_argument("--task", default=None, help="encode as queries with this task's prompt "
                   "(models trained with prompts); default: encode as documents")
  enc.add_argument("--dim", type=int, default=None, help="keep the first D values (MRL) and re-normalise")
  enc.add_argument("--batch-size", type=int, default=64)
  enc.add_argument("--max-length", type=int, default=None, help="default: the model's max length")
  enc.add_argument("--no-normalize", action="store_true", help="return raw (unnormalised) vectors")
  enc.add_argument("--quiet", action="store_true", help="no progress bar")
  enc.set_defaults(func=encode)


def encode(args) -> int:
  import numpy as np

  from gembed.encode import TextEncoder
  from gembed.formats import modeldir
  from gembed.textio import read_texts

  texts = read_texts(args.input)
  info, params = modeldir.load_model(modeldir.resolve_model_arg(args.model), args.adapter)
  encoder = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  normalize = info.normalize and not args.no_normalize
  embeddings = encoder.encode(texts, task=args.task, dim=args.dim, normalize=normalize,
                              progress=not args.quiet)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  np.save(args.output, embeddings)
  print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} float32 embeddings to {args.output}",
        file=sys.stderr)
  return 0
