"""The prompts of the LLM data stage and the parsers of their answers (method.md section 4).

Every prompt asks for one JSON object and every parser validates it strictly (keys, types,
ranges): an answer that does not pass raises `MalformedResponse`, which the client retries and
then records as a failure. `prompts_hash` names the exact prompt texts in the provenance of
every output row, so data made with different prompts is never mixed up.
"""

from __future__ import annotations

import hashlib
import json

from gembed.llmdata.client import MalformedResponse, parse_json_object

RELEVANCE_SYSTEM = (
    "You judge search results. Given a query and a passage, grade how relevant the passage is "
    "to the query: 3 = it fully answers or matches the query; 2 = it is highly relevant but "
    "incomplete; 1 = it is on a related topic but does not answer the query; 0 = it is "
    'irrelevant. Answer with JSON only: {"relevance": <0-3>}.')
RELEVANCE_SHOTS = [
    ("Query: how long do you boil an egg for a soft yolk\n"
     "Passage: For a soft, runny yolk, boil the egg for six to seven minutes, then cool it in "
     "ice water.", '{"relevance": 3}'),
    ("Query: how long do you boil an egg for a soft yolk\n"
     "Passage: Eggs are a good source of protein and contain vitamins B12 and D.",
     '{"relevance": 1}'),
]

LIKELIHOOD_SYSTEM = (
    "You estimate query likelihood. Read the passage, then judge how likely it is that a person "
    "who wanted exactly this passage would have written the given query, as a percentage from 0 "
    '(never) to 100 (certainly). Answer with JSON only: {"likelihood": <0-100>}.')
LIKELIHOOD_SHOTS = [
    ("Passage: The Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n"
     "Query: when was the eiffel tower built", '{"likelihood": 95}'),
    ("Passage: The Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n"
     "Query: tallest building in new york", '{"likelihood": 2}'),
]

FILTER_SYSTEM = (
    "You clean training data for a search engine. Given a query and the passage paired with it "
    "as the right answer, say whether the passage is actually relevant to the query (it answers "
    "it, or is a paraphrase of it for sentence pairs). Answer with JSON only: "
    '{"relevant": true} or {"relevant": false}.')
FILTER_SHOTS = [
    ("Query: what are the symptoms of iron deficiency\n"
     "Passage: Iron deficiency can cause fatigue, pale skin, shortness of breath and cold hands.",
     '{"relevant": true}'),
    ("Query: what are the symptoms of iron deficiency\n"
     "Passage: Click here to subscribe to our newsletter for weekly updates.",
     '{"relevant": false}'),
]

SYNTH_QUERY_SYSTEM = (
    "You write training data for a text embedding model. Given a passage, first describe a "
    "retrieval task for which this passage is a good result (one short sentence, e.g. 'Given a "
    "medical question, retrieve a passage that answers it'), then write one realistic query a "
    "user would type for that task, answered by the passage. The query must not copy long "
    'phrases from the passage. Answer with JSON only: {"task": "...", "query": "..."}.')
SYNTH_QUERY_SHOTS = [
    ("Passage: To reset the router, hold the button on the back for ten seconds until the "
     "lights flash, then wait two minutes for it to restart.",
     '{"task": "Given a user\'s technical support question, retrieve the instructions that '
     'solve it", "query": "my router keeps dropping wifi how do i reset it"}'),
]

SYNTH_CLASSIFICATION_SYSTEM = (
    "You write realistic, diverse texts for a text classification dataset. Task: {description}. "
    "Write {count} different texts whose correct label is \"{label}\". Vary length, style and "
    "topic; do not number them. Answer with JSON only: {{\"texts\": [\"...\", ...]}}.")

RATER_SYSTEM = (
    "You review synthetic training data. Say whether the item is realistic (something a real "
    "person could have written, fluent, not templated) and correct (for a query: the passage "
    "answers it; for a labelled text: the label is right). Answer with JSON only: "
    '{"realistic": true|false, "correct": true|false}.')


def few_shot(system: str, shots, user: str) -> list[dict]:
  messages = [{"role": "system", "content": system}]
  for question, answer in shots:
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
  return messages + [{"role": "user", "content": user}]


def relevance_messages(query: str, passage: str) -> list[dict]:
  return few_shot(RELEVANCE_SYSTEM, RELEVANCE_SHOTS, f"Query: {query}\nPassage: {passage}")


def likelihood_messages(query: str, passage: str) -> list[dict]:
  return few_shot(LIKELIHOOD_SYSTEM, LIKELIHOOD_SHOTS, f"Passage: {passage}\nQuery: {query}")


def filter_messages(query: str, passage: str) -> list[dict]:
  return few_shot(FILTER_SYSTEM, FILTER_SHOTS, f"Query: {query}\nPassage: {passage}")


def synth_query_messages(passage: str) -> list[dict]:
  return few_shot(SYNTH_QUERY_SYSTEM, SYNTH_QUERY_SHOTS, f"Passage: {passage}")


def synth_classification_messages(description: str, label: str, count: int, batch: int,
                                  examples: list[str]) -> list[dict]:
  system = SYNTH_CLASSIFICATION_SYSTEM.format(description=description, count=count, label=label)
  shown = "".join(f"\n- {e}" for e in examples)
  user = (f"Batch {batch + 1}. " + (f"Examples of this label:{shown}\n" if examples else "")
          + f"Write {count} new texts labelled \"{label}\".")
  return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def rater_messages(item: str) -> list[dict]:
  return [{"role": "system", "content": RATER_SYSTEM}, {"role": "user", "content": item}]


def _number(content: str, key: str, low: float, high: float) -> float:
  value = parse_json_object(content).get(key)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
    raise MalformedResponse(f"{key!r} must be a number in [{low}, {high}], got {value!r}")
  return float(value)


def _flag(obj: dict, key: str) -> bool:
  value = obj.get(key)
  if not isinstance(value, bool):
    raise MalformedResponse(f"{key!r} must be true or false, got {value!r}")
  return value


def parse_relevance(content: str) -> float:
  return _number(content, "relevance", 0, 3)


def parse_likelihood(content: str) -> float:
  return _number(content, "likelihood", 0, 100)


def parse_filter(content: str) -> bool:
  return _flag(parse_json_object(content), "relevant")


def parse_synth_query(content: str) -> dict:
  obj = parse_json_object(content)
  out = {}
  for key in ("task", "query"):
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
      raise MalformedResponse(f"{key!r} must be a non-empty string")
    out[key] = value.strip()
  return out


def parse_texts(content: str) -> list[str]:
  texts = parse_json_object(content).get("texts")
  if not isinstance(texts, list) or not texts:
    raise MalformedResponse("'texts' must be a non-empty list")
  clean = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
  if len(clean) != len(texts):
    raise MalformedResponse("every entry of 'texts' must be a non-empty string")
  return clean


def parse_rating(content: str) -> bool:
  obj = parse_json_object(content)
  return _flag(obj, "realistic") and _flag(obj, "correct")


def prompts_hash(*parts) -> str:
  """SHA-256 (first 16 hex digits) of the prompt texts a step used."""
  text = json.dumps(parts, ensure_ascii=False, sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


MINING_PROMPTS = (RELEVANCE_SYSTEM, RELEVANCE_SHOTS, LIKELIHOOD_SYSTEM, LIKELIHOOD_SHOTS)
FILTER_PROMPTS = (FILTER_SYSTEM, FILTER_SHOTS)
SYNTH_PROMPTS = (SYNTH_QUERY_SYSTEM, SYNTH_QUERY_SHOTS, SYNTH_CLASSIFICATION_SYSTEM, RATER_SYSTEM)
