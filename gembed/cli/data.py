"""The data commands: `gembed demo-data`, and the LLM data stage `gembed mine`, `gembed filter`
and `gembed synth` (docs/data-stage.md), in-process or as Apache Beam pipelines (`--beam`).
"""

from __future__ import annotations

import dataclasses
import json
import sys


def add_parsers(sub) -> None:
  from gembed.llmdata.mine import METHODS

  demo = sub.add_parser("demo-data", help="build the demo corpus from the installed Python "
                        "standard library and dependencies (train pairs + held-out retrieval set)")
  demo.add_argument("--output", required=True)
  demo.set_defaults(func=demo_data)

  p = sub.add_parser("mine", help="mine hard negatives for training rows (embedding neighbours, "
                     "optionally scored by an LLM and fused with RRF)")
  p.add_argument("--input", nargs="+", required=True, help="training JSONL: query, positive[, task]")
  p.add_argument("--output", required=True, help="JSONL rows with 'negatives' and 'mined'")
  p.add_argument("--model", default="all-MiniLM-L6-v2", help="any --model spec (embeds queries "
                 "and corpus)")
  p.add_argument("--corpus", default=None, help="more candidate texts: .jsonl (text[, title]) "
                 "or .txt (one per line); the inputs' positives are always included")
  p.add_argument("--method", default="window", choices=METHODS)
  p.add_argument("--num-negatives", type=int, default=1)
  p.add_argument("--top-k", type=int, default=30)
  p.add_argument("--rank-window", type=int, nargs=2, default=(0, 30), metavar=("START", "END"),
                 help="neighbour ranks that may become negatives (0 = nearest non-positive)")
  p.add_argument("--margin-ratio", type=float, default=0.95,
                 help="window: a negative's similarity must stay below RATIO x the positive's")
  p.add_argument("--rrf-k", type=int, default=60)
  p.add_argument("--relabel-positive", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--task", default=None, help="query prompt task for models trained with prompts")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, default=None)
  p.add_argument("--work-dir", default=None, help="embeddings on disk (default OUTPUT.work)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  add_llm_arguments(p, required=False)
  add_beam_arguments(p)
  p.set_defaults(func=mine)

  p = sub.add_parser("filter", help="drop (or flag) training pairs an LLM judges irrelevant")
  p.add_argument("--input", nargs="+", required=True, help="training JSONL: query, positive, ...")
  p.add_argument("--output", required=True)
  p.add_argument("--flag", action="store_true", help="keep every row, with the judgement under "
                 "'llm_filter', instead of dropping irrelevant ones")
  p.add_argument("--drop-failures", action="store_true", help="also drop rows the LLM could "
                 "not judge (default: keep them)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  add_llm_arguments(p)
  add_beam_arguments(p)
  p.set_defaults(func=filter_pairs)

  p = sub.add_parser("synth", help="generate synthetic training data with an LLM, then rate it")
  kinds = p.add_subparsers(dest="kind", required=True)
  r = kinds.add_parser("retrieval", help="(task, query) for each seed passage -> training rows")
  r.add_argument("--passages", required=True, help=".jsonl (a 'text' field) or .txt")
  r.add_argument("--queries-per-passage", type=int, default=1)
  r.add_argument("--task-name", default="synthetic", help="the rows' 'task' field")
  add_beam_arguments(r)
  c = kinds.add_parser("classification", help="labelled texts for a described task")
  c.add_argument("--description", required=True, help="e.g. 'sentiment of product reviews' or "
                 "'counterfactual statements in customer feedback'")
  c.add_argument("--labels", nargs="*", default=None)
  c.add_argument("--examples", default=None, help="labelled .jsonl (text, label): few-shot "
                 "examples, up to 3 per label")
  c.add_argument("--per-label", type=int, default=32)
  c.add_argument("--batch-size", type=int, default=8, help="texts asked for per request")
  for q in (r, c):
    q.add_argument("--output", required=True)
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    add_llm_arguments(q)
    q.set_defaults(func=synth)


def demo_data(args) -> int:
  from gembed.data.demo import build_demo_corpus
  print(json.dumps(build_demo_corpus(args.output), indent=2))
  return 0


def mine(args) -> int:
  from gembed.encode import TextEncoder
  from gembed.formats import modeldir
  from gembed.llmdata import mine as mining
  from gembed.llmdata.client import LLMClient

  config = mining.MiningConfig(method=args.method, num_negatives=args.num_negatives, top_k=args.top_k,
                        rank_window=tuple(args.rank_window), margin_ratio=args.margin_ratio,
                        rrf_k=args.rrf_k, relabel_positive=args.relabel_positive, seed=args.seed)
  llm_config = None
  if config.method == "llm":
    if not args.llm_base_url or not args.llm_model:
      raise ValueError("--method llm needs --llm-base-url and --llm-model")
    llm_config = llm_config_from_args(args)
  if args.beam:
    if config.method == "random":
      raise ValueError("--method random runs in-process only (it embeds nothing)")
    beam_pipeline = beam_pipeline_module()
    counts = beam_pipeline.run(beam_pipeline.build_mine, args, config=config, llm_config=llm_config)
    mining.write_summary(args.output, {"config": dataclasses.asdict(config), "model": args.model,
                                       "inputs": args.input, "runner": args.runner,
                                       "counts": counts})
    print(f"gembed mine: wrote {args.output}: {json.dumps(counts)}", file=sys.stderr)
    return 0
  client = LLMClient(llm_config, progress=not args.quiet) if llm_config else None
  rows = mining.read_training_rows(args.input)
  corpus, positive_ids = mining.build_corpus(rows, args.corpus)
  encoder = None
  if config.method != "random":
    info, params = modeldir.load_model(modeldir.resolve_model_arg(args.model))
    encoder = TextEncoder(info, params, batch_size=args.batch_size, max_length=args.max_length)
  mined, counts = mining.mine(rows, corpus, positive_ids, encoder=encoder, config=config,
                              model_name=args.model,
                              work_dir=args.work_dir or f"{args.output}.work", client=client, query_task=args.task, progress=not args.quiet)
  mining.write_jsonl(args.output, mined)
  summary = {"config": dataclasses.asdict(config), "model": args.model, "inputs": args.input,
             "counts": counts}
  if client is not None:
    summary["llm"] = {"model": client.config.model, "stats": client.stats}
  mining.write_summary(args.output, summary)
  shown = {k: v for k, v in counts.items() if k != "failures"}
  print(f"gembed mine: wrote {args.output}: {json.dumps(shown)}", file=sys.stderr)
  return 0


def filter_pairs(args) -> int:
  from gembed.llmdata import filter as llm_filter
  from gembed.llmdata.client import LLMClient
  from gembed.llmdata.mine import read_training_rows, write_jsonl, write_summary
  if args.beam:
    beam_pipeline = beam_pipeline_module()
    counts = beam_pipeline.run(beam_pipeline.build_llm_step, args, fn=llm_filter.filter_rows,
                               reader=beam_pipeline.read_training_rows,
                               llm_config=llm_config_from_args(args), flag=args.flag,
                               drop_failures=args.drop_failures)
    write_summary(args.output, {"inputs": args.input, "flag": args.flag, "runner": args.runner,
                                "counts": counts})
    print(f"gembed filter: wrote {args.output}: {json.dumps(counts)}", file=sys.stderr)
    return 0
  client = LLMClient(llm_config_from_args(args), progress=not args.quiet)
  rows = read_training_rows(args.input)
  out, counts = llm_filter.filter_rows(rows, client, flag=args.flag,
                                       drop_failures=args.drop_failures)
  write_jsonl(args.output, out)
  write_summary(args.output, {"inputs": args.input, "flag": args.flag, "counts": counts,
                              "llm": {"model": client.config.model, "stats": client.stats}})
  shown = {k: v for k, v in counts.items() if k != "failures"}
  print(f"gembed filter: wrote {args.output}: {json.dumps(shown)}", file=sys.stderr)
  return 0


def synth(args) -> int:
  from gembed.llmdata import synth as synthesis
  from gembed.llmdata.client import LLMClient
  from gembed.llmdata.mine import write_jsonl, write_summary
  from gembed.textio import read_texts
  llm_config = llm_config_from_args(args, default_temperature=1.0)
  if getattr(args, "beam", False):
    beam_pipeline = beam_pipeline_module()
    args.input = [args.passages]
    counts = beam_pipeline.run(beam_pipeline.build_llm_step, args, fn=synthesis.synth_retrieval,
                               reader=beam_pipeline.read_passage_texts, llm_config=llm_config,
                               queries_per_passage=args.queries_per_passage,
                               task_name=args.task_name)
    write_summary(args.output, {"kind": args.kind, "runner": args.runner, "counts": counts})
    print(f"gembed synth {args.kind}: wrote {args.output}: {json.dumps(counts)}", file=sys.stderr)
    return 0
  client = LLMClient(llm_config, progress=not args.quiet)
  if args.kind == "retrieval":
    passages = read_texts(args.passages)
    out, counts = synthesis.synth_retrieval(passages, client,
                                            queries_per_passage=args.queries_per_passage,
                                            task_name=args.task_name)
  else:
    examples = synthesis.read_examples(args.examples) if args.examples else None
    labels = args.labels or sorted(examples or [])
    if not labels:
      raise ValueError("synth classification needs --labels (or --examples to take them from)")
    out, counts = synthesis.synth_classification(labels, client, description=args.description,
                                                 per_label=args.per_label,
                                                 batch_size=args.batch_size, examples=examples)
  write_jsonl(args.output, out)
  write_summary(args.output, {"kind": args.kind, "counts": counts,
                              "llm": {"model": client.config.model, "stats": client.stats}})
  print(f"gembed synth {args.kind}: wrote {args.output}: {json.dumps(counts)}", file=sys.stderr)
  return 0


def add_llm_arguments(parser, required: bool = True) -> None:
  """The flags every LLM step shares."""
  g = parser.add_argument_group("LLM endpoint (OpenAI-compatible chat/completions)")
  g.add_argument("--llm-base-url", required=required, help="e.g. http://localhost:8000/v1 (vLLM), "
                 "http://localhost:11434/v1 (Ollama), "
                 "https://generativelanguage.googleapis.com/v1beta/openai (Gemini)")
  g.add_argument("--llm-model", required=required, help="model name the endpoint serves")
  g.add_argument("--llm-api-key-env", default="OPENAI_API_KEY",
                 help="environment variable holding the API key (the key itself is never a flag)")
  g.add_argument("--llm-cache", default="", help="response cache: a folder, shared filesystem or "
                 "gs:// path (default: OUTPUT.llm-cache beside the output)")
  g.add_argument("--llm-concurrency", type=int, default=8)
  g.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
  g.add_argument("--llm-max-retries", type=int, default=6)
  g.add_argument("--llm-temperature", type=float, default=None,
                 help="default: 0 for judging, 1 for generation")


def llm_config_from_args(args, default_temperature: float = 0.0):
  from gembed.llmdata.client import LLMConfig
  temperature = args.llm_temperature if args.llm_temperature is not None else default_temperature
  return LLMConfig(base_url=args.llm_base_url, model=args.llm_model,
                   api_key_env=args.llm_api_key_env,
                   cache_dir=args.llm_cache or f"{args.output}.llm-cache",
                   concurrency=args.llm_concurrency, timeout_s=args.llm_timeout,
                   max_retries=args.llm_max_retries, temperature=temperature)


def add_beam_arguments(parser) -> None:
  g = parser.add_argument_group("Apache Beam (pip install -e '.[beam]')")
  g.add_argument("--beam", action="store_true", help="run as a Beam pipeline")
  g.add_argument("--runner", default="DirectRunner",
                 help="DirectRunner (local), DataflowRunner, FlinkRunner, SparkRunner, ...")
  g.add_argument("--beam-options", default="", help="more pipeline options, e.g. '--project=P "
                 "--region=R --temp_location=gs://B/tmp' for Dataflow")
  g.add_argument("--num-shards", type=int, default=1, help="output files (1: exactly --output)")
  g.add_argument("--llm-batch", type=int, default=64, help="items per LLM batch in a worker")
  g.add_argument("--block-size", type=int, default=16384,
                 help="mine: corpus embeddings per block streamed past each query batch")


def beam_pipeline_module():
  """gembed.llmdata.beam_pipeline, or a clear error when the `beam` extra is not installed."""
  try:
    from gembed.llmdata import beam_pipeline
  except ImportError as e:
    raise ValueError(f"--beam needs Apache Beam: pip install -e '.[beam]' ({e})") from None
  return beam_pipeline
