"""`gembed bench encode|train|data|memory|stream|mine|quality`: benchmarks beside the peer
(gembed.tools.bench, one module per benchmark; a new one is a module there and a parser here)."""

from __future__ import annotations

import importlib
import json
import sys


def add_parsers(sub) -> None:
  from gembed.tools.bench.common import BUCKETS, DEFAULT_PAIRS, DEFAULT_TEXTS, DEFAULT_TRIPLES

  bench = sub.add_parser("bench", help="benchmarks against sentence-transformers (needs the "
                         "test extra)")
  bench.set_defaults(func=run)
  kinds = bench.add_subparsers(dest="bench", required=True)
  enc = kinds.add_parser("encode", help="encoding texts/s, gembed vs sentence-transformers")
  enc.add_argument("--texts", default=DEFAULT_TEXTS, help="JSONL with query/positive fields")
  enc.add_argument("--n", type=int, default=2048)
  enc.add_argument("--repeats", type=int, default=3)
  enc.add_argument("--model", default=None, help="model to time (default: the shipped "
                   "checkpoint); sentence-transformers runs it too when it is an HF directory")
  enc.add_argument("--student", default=None, help="a second model timed on the same texts "
                   "(e.g. a distilled student): its texts/s and speed-up over --model")
  enc.add_argument("--onnx", default=None, metavar="DIR", help="a `gembed export --onnx` "
                   "directory: time its model in JAX, sentence-transformers and both ONNX files")
  train = kinds.add_parser("train", help="training examples/s, gembed vs sentence-transformers")
  train.add_argument("--triples", default=DEFAULT_TRIPLES)
  train.add_argument("--steps", type=int, default=6)
  train.add_argument("--model", default=None, help="model directory (default: the shipped "
                     "all-MiniLM-L6-v2)")
  train.add_argument("--grad-cache-chunk", type=int, default=0, help="GradCache chunk rows (0: plain)")
  train.add_argument("--buckets", type=int, nargs="+", default=list(BUCKETS),
                     help="gembed's length buckets (the peer pads to each batch's longest text)")
  train.add_argument("--length-groups", type=int, default=1,
                     help="sort each batch's rows by length into this many groups, each cut to "
                     "its own bucket (data.length_groups)")
  train.add_argument("--dropout", type=float, default=0.1,
                     help="dropout rate of both sides' encoders (BERT's 0.1; 0: the step without it)")
  train.add_argument("--no-peer", action="store_true",
                     help="gembed only (no torch / sentence-transformers needed)")
  memory = kinds.add_parser("memory", help="compiled memory and throughput, plain vs GradCache")
  memory.add_argument("--triples", default=DEFAULT_TRIPLES)
  memory.add_argument("--model", default=None)
  memory.add_argument("--batches", type=int, nargs="*", default=[256, 1024, 4096],
                      help="global batch sizes (triples) whose compiled memory is reported")
  memory.add_argument("--chunk", type=int, default=32, help="GradCache chunk rows")
  memory.add_argument("--run-batch", type=int, default=1024, help="batch of the timed GradCache run")
  memory.add_argument("--run-steps", type=int, default=2)
  data = kinds.add_parser("data", help="SeqIO tokenisation + batching texts/s")
  data.add_argument("--triples", default=DEFAULT_TRIPLES)
  data.add_argument("--batches", type=int, default=20)
  data.add_argument("--repeats", type=int, default=3)
  stream = kinds.add_parser("stream", help="peak resident memory of a short training run over "
                            "N generated JSONL rows, for each N")
  stream.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
  stream.add_argument("--steps", type=int, default=4)
  stream.add_argument("--config", default="configs/finetune.py:tiny",
                      help="the training config (its two task files are generated)")
  stream.add_argument("--model", default=None, help="model.init (default: the config's)")
  stream.add_argument("--tmp", default=None, help="where the rows are written (default: the "
                      "system's temporary directory)")
  mine_p = kinds.add_parser("mine", help="hard-negative mining vs sentence-transformers' "
                           "mine_hard_negatives (the peer also needs `pip install datasets`)")
  mine_p.add_argument("--pairs", default=DEFAULT_PAIRS)
  mine_p.add_argument("--n", type=int, default=100000, help="rows read from --pairs")
  mine_p.add_argument("--top-k", type=int, default=30)
  mine_p.add_argument("--margin-ratio", type=float, default=0.95)
  mine_p.add_argument("--repeats", type=int, default=3)
  kinds.add_parser("quality", help="the recipe vs sentence-transformers on held-out sets: "
                   "gembed bench quality --config configs/recipe.py --workdir DIR "
                   "[--config.a.b=v ...] (the flags of gembed recipe)")
  for p in (enc, train, memory, data, mine_p):
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)


PEER_PACKAGES = ("torch", "sentence_transformers", "transformers", "datasets", "onnxruntime")


def run(args) -> int:
  module = importlib.import_module(f"gembed.tools.bench.{args.bench}")
  try:
    result = module.run(args)
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
