"""`gembed filter`: an LLM judges every (query, positive) pair with a few-shot prompt; pairs
judged irrelevant are dropped (default) or kept with the judgement under `llm_filter`
(`--flag`). A pair the LLM could not judge is kept and counted (`--drop-failures` drops it)."""

from __future__ import annotations

import json
import sys

from gembed.llmdata import prompts
from gembed.llmdata.mine import read_training_rows, write_jsonl, write_summary


def filter_rows(rows: list[dict], client, *, flag: bool = False, drop_failures: bool = False):
  """(output rows, counts). Pure apart from the client's requests."""
  results = client.map([(prompts.filter_messages(r["query"], r["positive"]), prompts.parse_filter)
                        for r in rows], desc="judging pairs")
  provenance = {"llm_model": client.config.model,
                "prompts_sha256": prompts.prompts_hash(*prompts.FILTER_PROMPTS)}
  counts = {"rows": len(rows), "relevant": 0, "irrelevant": 0, "failed": 0, "written": 0}
  out, failures = [], []
  for i, (row, result) in enumerate(zip(rows, results)):
    if not result.ok:
      counts["failed"] += 1
      failures.append({"row": i, "error": result.error})
      verdict = {"relevant": None, "error": result.error}
      keep = not drop_failures
    else:
      counts["relevant" if result.value else "irrelevant"] += 1
      verdict = {"relevant": result.value}
      keep = result.value or flag
    if keep:
      out.append(dict(row, llm_filter=dict(provenance, **verdict)) if flag else row)
  counts["written"] = len(out)
  counts["failures"] = failures[:1000]
  return out, counts


def run_cli(args) -> int:
  from gembed.llmdata.client import LLMClient
  from gembed.llmdata.cli_args import llm_config_from_args
  if args.beam:
    from gembed.llmdata.cli_args import beam_pipeline_module
    beam_pipeline = beam_pipeline_module()
    counts = beam_pipeline.run(beam_pipeline.build_llm_step, args, fn=filter_rows,
                               reader=beam_pipeline.read_training_rows,
                               llm_config=llm_config_from_args(args), flag=args.flag,
                               drop_failures=args.drop_failures)
    write_summary(args.output, {"inputs": args.input, "flag": args.flag, "runner": args.runner,
                                "counts": counts})
    print(f"gembed filter: wrote {args.output}: {json.dumps(counts)}", file=sys.stderr)
    return 0
  client = LLMClient(llm_config_from_args(args), progress=not args.quiet)
  rows = read_training_rows(args.input)
  out, counts = filter_rows(rows, client, flag=args.flag, drop_failures=args.drop_failures)
  write_jsonl(args.output, out)
  write_summary(args.output, {"inputs": args.input, "flag": args.flag, "counts": counts,
                              "llm": {"model": client.config.model, "stats": client.stats}})
  shown = {k: v for k, v in counts.items() if k != "failures"}
  print(f"gembed filter: wrote {args.output}: {json.dumps(shown)}", file=sys.stderr)
  return 0


def add_parser(sub):
  from gembed.llmdata.cli_args import add_beam_arguments, add_llm_arguments
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
  p.set_defaults(func=run_cli)
