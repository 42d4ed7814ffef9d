"""Entry point of `gembed eval`."""

from __future__ import annotations

import logging

from gembed.evaluation import report, suite

log = logging.getLogger(__name__)


def default_dims(info) -> list[int]:
  return sorted(set(info.mrl_dims) | {info.config.embedding_dim}, reverse=True)


def run_cli(args) -> int:
  from gembed import modeldir
  from gembed.modeldir import resolve_model_arg
  from gembed.encode import TextEncoder

  sets = suite.select(suite.discover(args.data, args.split), args.tasks)
  if not sets:
    raise ValueError(f"{args.data}: no evaluation sets found (expected the layout of shared/data)")
  info, params = modeldir.load_model(resolve_model_arg(args.model))
  dims = sorted(args.dims or default_dims(info), reverse=True)
  encoder = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  overrides = {}
  for item in args.prompt_task or []:
    name, sep, task = item.partition("=")
    if not sep or not task:
      raise ValueError(f"--prompt-task {item!r}: expected SET_OR_PREFIX=TASK")
    overrides[name] = task
  results = suite.evaluate(suite.ModelEmbedder(encoder), sets, dims, args.max_examples,
                           progress=True, prompt_overrides=overrides)
  results = {"model": args.model, **results}
  report.write_results(results, args.output)
  print(report.results_markdown(results))
  return 0
