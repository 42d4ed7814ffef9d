"""`gembed eval`: MTEB-style evaluation of a model at every MRL dimension."""

from __future__ import annotations


def add_parsers(sub) -> None:
  ev = sub.add_parser("eval", help="MTEB-style evaluation at every MRL dimension")
  ev.add_argument("--model", required=True)
  ev.add_argument("--adapter", default=None, help="an adapter directory (a LoRA run's "
                  "WORKDIR/adapter) applied to --model, the base it was trained on")
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
  ev.add_argument("--onnx", default=None, metavar="FILE", help="encode with this ONNX file of "
                  "`gembed export --onnx` (onnxruntime, CPU) instead of JAX; --model is its export "
                  "directory (prompts, tokenizer)")
  ev.set_defaults(func=evaluate)


def evaluate(args) -> int:
  from gembed.encode import OnnxEncoder, TextEncoder
  from gembed.evaluation import report, suite
  from gembed.formats import modeldir

  sets = suite.select(suite.discover(args.data, args.split), args.tasks)
  if not sets:
    raise ValueError(f"{args.data}: no evaluation sets found (expected the layout of shared/data)")
  info, params = modeldir.load_model(modeldir.resolve_model_arg(args.model), args.adapter)
  dims = sorted(args.dims or info.dims, reverse=True)
  if args.onnx:
    encoder = OnnxEncoder(info, args.onnx, batch_size=args.batch_size, max_length=args.max_length)
  else:
    encoder = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  overrides = {}
  for item in args.prompt_task or []:
    name, sep, task = item.partition("=")
    if not sep or not task:
      raise ValueError(f"--prompt-task {item!r}: expected SET_OR_PREFIX=TASK")
    overrides[name] = task
  results = suite.evaluate(suite.ModelEmbedder(encoder), sets, dims, args.max_examples,
                           progress=True, prompt_overrides=overrides)
  results = {"model": args.model, "adapter": args.adapter, **results}
  report.write_results(results, args.output)
  print(report.results_markdown(results))
  return 0
