"""`gembed synth`: synthetic training data by few-shot generation, then an LLM rater.

- `gembed synth retrieval`: for each seed passage, the LLM writes a task description and a query
  the passage answers -> training rows {"query", "positive", "task", "task_description"}.
- `gembed synth classification`: for each label, the LLM writes batches of texts of that label for
  a described task (counterfactual statements, sentiment, reviews, ...), optionally shown real
  examples -> classification rows {"text", "label"} (the layout of shared/data classification).

Every generated item then goes past a rater prompt; items judged unrealistic or wrong are
dropped, as are items the rater could not judge and exact duplicates. Each request carries a
`seed`, so several generations of one prompt are distinct cache entries and reruns are exact.
"""

from __future__ import annotations

from gembed.llmdata import prompts
from gembed.textio import InputError, iter_jsonl, text_identity


def _rated(client, items: list, render, counts: dict) -> list:
  """The items the rater judged realistic and correct; the others are counted."""
  ratings = client.map([(prompts.rater_messages(render(item)), prompts.parse_rating)
                        for item in items], desc="rating")
  kept = []
  for item, rating in zip(items, ratings):
    if not rating.ok:
      counts["rating_failed"] += 1
    elif not rating.value:
      counts["rated_unrealistic"] += 1
    else:
      kept.append(item)
  return kept


def _provenance(client) -> dict:
  return {"llm_model": client.config.model,
          "prompts_sha256": prompts.prompts_hash(*prompts.SYNTH_PROMPTS)}


def synth_retrieval(passages: list[str], client, *, queries_per_passage: int = 1,
                    task_name: str = "synthetic"):
  requests = [(prompts.synth_query_messages(p), prompts.parse_synth_query)
              for p in passages for _ in range(queries_per_passage)]
  seeds = [j for _ in passages for j in range(queries_per_passage)]
  generated = _map_seeded(client, requests, seeds, "generating queries")
  counts = {"passages": len(passages), "generated": 0, "generation_failed": 0, "duplicates": 0,
            "rated_unrealistic": 0, "rating_failed": 0, "written": 0}
  items, seen = [], set()
  for n, result in enumerate(generated):
    if not result.ok:
      counts["generation_failed"] += 1
      continue
    counts["generated"] += 1
    passage = passages[n // queries_per_passage]
    key = (text_identity(result.value["query"]), text_identity(passage))
    if key in seen:
      counts["duplicates"] += 1
      continue
    seen.add(key)
    items.append((result.value, passage))
  provenance = _provenance(client)
  kept = _rated(client, items, lambda i: f"Query: {i[0]['query']}\nPassage: {i[1]}", counts)
  out = [{"query": value["query"], "positive": passage, "task": task_name,
          "task_description": value["task"], "synth": provenance} for value, passage in kept]
  counts["written"] = len(out)
  return out, counts


def synth_classification(labels: list[str], client, *, description: str, per_label: int,
                         batch_size: int = 8, examples: dict[str, list[str]] | None = None):
  batches = -(-per_label // batch_size)
  requests, seeds, owners = [], [], []
  for label in labels:
    shown = (examples or {}).get(label, [])[:3]
    for b in range(batches):
      requests.append((prompts.synth_classification_messages(description, label, batch_size, b,
                                                             shown), prompts.parse_texts))
      seeds.append(b)
      owners.append(label)
  generated = _map_seeded(client, requests, seeds, "generating texts")
  counts = {"labels": len(labels), "generated": 0, "generation_failed": 0, "duplicates": 0,
            "rated_unrealistic": 0, "rating_failed": 0, "written": 0}
  items, seen, per = [], set(), {label: 0 for label in labels}
  for label, result in zip(owners, generated):
    if not result.ok:
      counts["generation_failed"] += 1
      continue
    for text in result.value:
      counts["generated"] += 1
      if text_identity(text) in seen:
        counts["duplicates"] += 1
        continue
      seen.add(text_identity(text))
      items.append((text, label))
  out, provenance = [], _provenance(client)
  for text, label in _rated(client, items,
                            lambda i: f"Task: {description}\nLabel: {i[1]}\nText: {i[0]}", counts):
    if per[label] < per_label:
      per[label] += 1
      out.append({"text": text, "label": label, "synth": provenance})
  counts["written"] = len(out)
  return out, counts


def _map_seeded(client, requests, seeds, desc):
  """client.map with a per-request seed in the body (distinct, reproducible generations)."""
  return client.map([(messages, parse, {"seed": seed})
                     for (messages, parse), seed in zip(requests, seeds)], desc=desc)


def read_examples(path: str) -> dict[str, list[str]]:
  examples: dict[str, list[str]] = {}
  for number, row in iter_jsonl(path):
    if not isinstance(row.get("text"), str) or not isinstance(row.get("label"), (str, int)):
      raise InputError(f"{path}:{number}: expected a string 'text' and a 'label'")
    examples.setdefault(str(row["label"]), []).append(row["text"])
  return examples
