"""`gembed filter`: an LLM judges every (query, positive) pair with a few-shot prompt; pairs
judged irrelevant are dropped (default) or kept with the judgement under `llm_filter`
(`--flag`). A pair the LLM could not judge is kept and counted (`--drop-failures` drops it)."""

from __future__ import annotations

from gembed.llmdata import prompts


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
