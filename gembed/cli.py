"""`gembed` command line: encode, train, eval, soup, export (see docs/cli.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from gembed.modeldir import resolve_model_arg


def _encode(args) -> int:
  from gembed import modeldir
  from gembed.encode import TextEncoder
  from gembed.textio import read_texts

  texts = read_texts(args.input)
  info, params = modeldir.load_model(resolve_model_arg(args.model))
  encoder = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  normalize = info.normalize and not args.no_normalize
  embeddings = encoder.encode(texts, task=args.task, dim=args.dim, normalize=normalize,
                              progress=not args.quiet)
  out_dir = os.path.dirname(os.path.abspath(args.output))
  os.makedirs(out_dir, exist_ok=True)
  np.save(args.output, embeddings)
  print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} float32 embeddings to {args.output}",
        file=sys.stderr)
  return 0


def _eval(args) -> int:
  from gembed.evaluation.run import run_cli
  return run_cli(args)


def _soup(args) -> int:
  from gembed import soup

  dev_score = None
  if args.dev_data:
    from gembed.encode import TextEncoder
    from gembed.evaluation import suite
    sets = suite.select(suite.discover(args.dev_data, split=args.dev_split), args.dev_tasks)
    if not sets:
      raise ValueError(f"--dev-data {args.dev_data}: no {args.dev_split} evaluation sets found")

    def dev_score(info, params):
      encoder = TextEncoder(info, params, batch_size=args.batch_size)
      results = suite.evaluate(suite.ModelEmbedder(encoder), sets, [info.config.embedding_dim],
                               args.max_examples)
      return suite.main_score(results, args.metric)
  elif args.greedy:
    raise ValueError("--greedy needs --dev-data: candidates are kept by their dev score")
  models = [resolve_model_arg(m) for m in args.model]
  record = soup.make_soup(models, args.output, weights=args.weights, greedy=args.greedy,
                          dev_score=dev_score)
  print(json.dumps(record, indent=2))
  return 0


def _export(args) -> int:
  from gembed.export import export_sentence_transformers
  out = export_sentence_transformers(resolve_model_arg(args.model), args.output)
  print(f"wrote a sentence-transformers model to {out}", file=sys.stderr)
  return 0


def _demo_data(args) -> int:
  from gembed.data.demo import build_demo_corpus
  counts = build_demo_corpus(args.output)
  print(json.dumps(counts, indent=2))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="gembed", description="Train and use text embedding models.")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  sub = parser.add_subparsers(dest="command", required=True)

  enc = sub.add_parser("encode", help="embed texts (.txt: one per line; .jsonl: a 'text' field)")
  enc.add_argument("--model", required=True, help="model directory, workdir[@best|@STEP], or "
                   "all-MiniLM-L6-v2 (the shipped checkpoint)")
  enc.add_argument("--input", required=True)
  enc.add_argument("--output", required=True, help=".npy file, one row per input line")
  enc.add_argument("--task", default=None, help="encode as queries with this task's prompt "
                   "(models trained with prompts); default: encode as documents")
  enc.add_argument("--dim", type=int, default=None, help="keep the first D values (MRL) and re-normalise")
  enc.add_argument("--batch-size", type=int, default=64)
  enc.add_argument("--max-length", type=int, default=None, help="default: the model's max length")
  enc.add_argument("--no-normalize", action="store_true", help="return raw (unnormalised) vectors")
  enc.add_argument("--quiet", action="store_true", help="no progress bar")
  enc.set_defaults(func=_encode)

  sub.add_parser("train", help="train: gembed train --config configs/X.py --workdir DIR "
                 "[--config.a.b=v ...] (the flags of python -m gembed.main)")
  sub.add_parser("recipe", help="the whole recipe: gembed recipe --config configs/recipe.py "
                 "--workdir DIR [--config.a.b=v ...] (stage 1 -> mine -> ingredients -> soup -> "
                 "held-out evaluation -> report)")

  ev = sub.add_parser("eval", help="MTEB-style evaluation at every MRL dimension")
  ev.add_argument("--model", required=True)
  ev.add_argument("--data", required=True, help="directory in the layout of shared/data")
  ev.add_argument("--output", required=True)
  ev.add_argument("--tasks", nargs="*", default=None,
                  help="task names or prefixes (e.g. sts/stsb retrieval); default: all found")
  ev.add_argument("--dims", nargs="*", type=int, default=None,
                  help="default: the model's MRL dims, else its full width")
  ev.add_argument("--prompt-task", action="append", metavar="SET=TASK",
                  help="prompt task for a set, prefix or type (e.g. retrieval/cosqa='code "
                  "retrieval'); symmetric types prompt both sides; repeatable")
  ev.add_argument("--split", default="test", help="file split where sets have several (dev for "
                  "model selection)")
  ev.add_argument("--max-examples", type=int, default=0, help="cap rows/queries per set (0 = all)")
  ev.add_argument("--batch-size", type=int, default=64)
  ev.add_argument("--max-length", type=int, default=None)
  ev.set_defaults(func=_eval)
  sp = sub.add_parser("soup", help="average the parameters of several models (uniform, "
                      "weighted, or greedy by dev score)")
  sp.add_argument("--model", action="append", required=True,
                  help="an ingredient (any --model spec, e.g. RUN@STEP); repeat for each")
  sp.add_argument("--output", required=True, help="directory of the souped model")
  sp.add_argument("--weights", nargs="*", type=float, default=None,
                  help="one weight per --model (normalised to sum 1); default: uniform")
  sp.add_argument("--greedy", action="store_true",
                  help="add ingredients best-first, keeping each only if the dev score holds")
  sp.add_argument("--dev-data", default=None, help="directory in the layout of shared/data "
                  "holding the dev sets that score candidates")
  sp.add_argument("--dev-split", default="dev")
  sp.add_argument("--dev-tasks", nargs="*", default=None, help="dev set names or prefixes")
  sp.add_argument("--metric", default="task_mean", help="task_mean, type_mean or a set name")
  sp.add_argument("--max-examples", type=int, default=0)
  sp.add_argument("--batch-size", type=int, default=64)
  sp.set_defaults(func=_soup)

  ex = sub.add_parser("export", help="write a sentence-transformers model directory")
  ex.add_argument("--model", required=True)
  ex.add_argument("--output", required=True)
  ex.set_defaults(func=_export)

  demo = sub.add_parser("demo-data", help="build the demo corpus from the installed Python "
                        "standard library and dependencies (train pairs + held-out retrieval set)")
  demo.add_argument("--output", required=True)
  demo.set_defaults(func=_demo_data)

  from gembed.llmdata import filter as llm_filter, mine, synth
  for step in (mine, llm_filter, synth):
    step.add_parser(sub)

  from gembed import bench
  bench.add_parser(sub)
  sub.choices["bench"].set_defaults(func=bench.run)
  return parser


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["train"]:  # every flag belongs to the trainer's absl/ml_collections parser
    from gembed import main as train_main
    return train_main.run(["gembed train", *argv[1:]])
  if argv[:1] == ["recipe"]:  # the recipe config's flags, like train's
    from gembed import recipe
    return recipe.main(["gembed recipe", *argv[1:]])
  if argv[:2] == ["bench", "quality"]:  # the recipe config's flags too
    from gembed import quality
    return quality.main(["gembed bench quality", *argv[2:]])
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from gembed.textio import InputError
  from gembed.models.hf_import import CheckpointImportError
  try:
    return args.func(args)
  except (InputError, CheckpointImportError, FileNotFoundError, ValueError) as e:
    print(f"gembed {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
