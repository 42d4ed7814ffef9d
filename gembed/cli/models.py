"""`gembed soup` and `gembed export`: new model directories from existing models."""

from __future__ import annotations

import json
import sys


def add_parsers(sub) -> None:
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
  sp.set_defaults(func=soup)

  ex = sub.add_parser("export", help="write a sentence-transformers model directory")
  ex.add_argument("--model", required=True)
  ex.add_argument("--adapter", default=None, help="an adapter directory applied to --model and "
                  "merged into its weights (a LoRA workdir given as --model is merged too)")
  ex.add_argument("--output", required=True)
  ex.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (fp32) and "
                  "onnx/model_qint8.onnx (int8): needs the onnx extra")
  ex.set_defaults(func=export)


def soup(args) -> int:
  from gembed import soup as soups
  from gembed.formats import modeldir

  score_fn = None
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
    score_fn = dev_score
  elif args.greedy:
    raise ValueError("--greedy needs --dev-data: candidates are kept by their dev score")
  models = [modeldir.resolve_model_arg(m) for m in args.model]
  record = soups.make_soup(models, args.output, weights=args.weights, greedy=args.greedy,
                           dev_score=score_fn)
  print(json.dumps(record, indent=2))
  return 0


def export(args) -> int:
  from gembed.formats import modeldir, sentence_transformers

  info, params = modeldir.merged(*modeldir.load_model(modeldir.resolve_model_arg(args.model),
                                                      args.adapter))
  out = sentence_transformers.write_sentence_transformers(info, params, args.output)
  print(f"wrote a sentence-transformers model to {out}", file=sys.stderr)
  if args.onnx:
    from gembed.formats import onnx_export
    try:
      paths = onnx_export.write_onnx(out)
    except ModuleNotFoundError as e:
      package = (e.name or "").split(".")[0]
      print(f"gembed export --onnx needs {package}: pip install -e '.[onnx]'", file=sys.stderr)
      return 2
    for path in paths:
      print(f"wrote {path}", file=sys.stderr)
  return 0
