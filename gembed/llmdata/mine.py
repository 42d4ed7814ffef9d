"""`gembed mine`: hard negatives for (query, positive) training rows.

1. The corpus is every positive and negative of the input rows plus an optional `--corpus`,
   de-duplicated by normalised text, so an exact duplicate of a positive *is* that positive.
2. Queries and corpus are embedded with `--model` (chunked, to disk) and each query's top-k
   neighbours are found with its positives, and the query's own text, masked out.
3. Negatives are chosen per row by one of three methods:
   - `window` (no LLM): neighbours in a rank window whose similarity stays below
     `margin_ratio` x the positive's similarity (the positive-aware filter that keeps likely
     false negatives out);
   - `llm`: every candidate is scored under two prompts (graded relevance, query likelihood),
     the two rankings are fused with Reciprocal Rank Fusion, and the lowest-fused candidates
     become the negatives; optionally the top-fused candidate replaces the positive;
   - `random`: uniform in-corpus negatives (the baseline the others are measured against).
4. Rows are written as JSONL the training sources read (`negatives`: [...]), each with its
   provenance under `mined`; `OUTPUT.summary.json` holds the settings and counts.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from gembed.llmdata import prompts
from gembed.llmdata.neighbours import embed_to_file, params_digest
from gembed.textio import InputError, iter_jsonl, read_lines, text_identity
from gembed.vectors import top_k

METHODS = ("window", "llm", "random")


@dataclasses.dataclass(frozen=True)
class MiningConfig:
  method: str = "window"
  num_negatives: int = 1
  top_k: int = 30  # neighbours searched per query (after exclusions)
  rank_window: tuple[int, int] = (0, 30)  # neighbour ranks [start, end) that may be negatives
  margin_ratio: float = 0.95  # window: negative similarity < ratio x positive similarity
  rrf_k: int = 60  # llm: Reciprocal Rank Fusion constant
  relabel_positive: bool = False  # llm: the top-fused candidate becomes the positive
  seed: int = 0  # random

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
    start, end = self.rank_window
    if not 0 <= start < end:
      raise ValueError(f"--rank-window {start} {end}: expected 0 <= start < end")
    if self.num_negatives < 1:
      raise ValueError("--num-negatives must be at least 1")
    if self.relabel_positive and self.method != "llm":
      raise ValueError("--relabel-positive needs --method llm")


@dataclasses.dataclass
class Corpus:
  texts: list[str]
  titles: list[str]
  index: dict[str, int]  # normalised text -> id
  choice: list[tuple]  # (priority, text, title) each entry was chosen by

  def add(self, text: str, title: str = "", priority: int = 1) -> int:
    """Adds a text, or merges it into its exact duplicate. Of duplicates the entry keeps the
    smallest (priority, text, title), an order any runner (Beam included) can reproduce."""
    key = text_identity(text)
    candidate = (priority, text, title)
    if key not in self.index:
      self.index[key] = len(self.texts)
      self.texts.append(text)
      self.titles.append(title)
      self.choice.append(candidate)
    i = self.index[key]
    if candidate < self.choice[i]:
      self.choice[i], self.texts[i], self.titles[i] = candidate, text, title
    return i


def row_documents(row: dict) -> list[tuple[int, str, str]]:
  """(priority, text, title) of a row's documents: its positive first (priority 0), then any
  negatives it already has."""
  negatives = row.get("negatives") or ([row["negative"]] if row.get("negative") else [])
  return [(0, row["positive"], row.get("title") or "")] + [(1, n, "") for n in negatives]


def read_passages(path: str, raw: bytes | None = None):
  """(text, title) of a corpus file: .jsonl (a 'text' field, optional 'title') or .txt."""
  if path.endswith(".jsonl"):
    for number, entry in iter_jsonl(path, raw):
      if not isinstance(entry.get("text"), str):
        raise InputError(f"{path}:{number}: field 'text' must be a string")
      if entry["text"].strip() or entry.get("title"):
        yield entry["text"], entry.get("title") or ""
  else:
    for line in read_lines(path, raw):
      if line.strip():
        yield line, ""


def iter_training_rows(path: str, raw: bytes | None = None):
  """Rows with a non-empty string query and positive; errors name file and line."""
  for number, row in iter_jsonl(path, raw):
    for key in ("query", "positive"):
      if not isinstance(row.get(key), str) or not row[key].strip():
        raise InputError(f"{path}:{number}: field {key!r} must be a non-empty string")
    yield row


def read_training_rows(paths: list[str]) -> list[dict]:
  rows = [row for path in paths for row in iter_training_rows(path)]
  if not rows:
    raise InputError(f"{', '.join(paths)}: no training rows")
  return rows


def build_corpus(rows: list[dict], corpus_file: str | None = None) -> tuple[Corpus, list[int]]:
  """The de-duplicated corpus and each row's positive id."""
  corpus = Corpus([], [], {}, [])
  positive_ids = []
  for row in rows:
    ids = [corpus.add(text, title, priority) for priority, text, title in row_documents(row)]
    positive_ids.append(ids[0])
  for text, title in read_passages(corpus_file) if corpus_file else ():
    corpus.add(text, title)
  return corpus, positive_ids


def query_groups(rows: list[dict], positive_ids: list[int], corpus: Corpus):
  """Unique queries, each row's query index, and per query the corpus ids never to be negatives:
  every positive of that query (all its rows) and the query's own text."""
  order: dict[str, int] = {}
  row_query = []
  for r in rows:
    row_query.append(order.setdefault(text_identity(r["query"]), len(order)))
  queries = [""] * len(order)
  exclude: list[set[int]] = [set() for _ in order]
  for r, q, pid in zip(rows, row_query, positive_ids):
    queries[q] = r["query"]
    exclude[q].add(pid)
    own = corpus.index.get(text_identity(r["query"]))
    if own is not None:
      exclude[q].add(own)
  return queries, row_query, [sorted(e) for e in exclude]


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A neighbour of a query: its text, rank among the admissible neighbours, and similarity."""

  text: str
  title: str
  rank: int
  similarity: float

  @property
  def passage(self) -> str:
    return f"{self.title}\n{self.text}" if self.title else self.text


def select_window(ids, scores, positive_score: float, config: MiningConfig) -> list[int]:
  """Neighbour ranks (hardest first) in the rank window below the positive-aware ceiling."""
  start, end = config.rank_window
  ceiling = config.margin_ratio * positive_score if positive_score > 0 else positive_score
  chosen = []
  for rank in range(start, min(end, len(ids))):
    if ids[rank] >= 0 and scores[rank] < ceiling:
      chosen.append(rank)
      if len(chosen) == config.num_negatives:
        break
  return chosen


def window_negatives(candidates: list[Candidate], positive_score: float, config: MiningConfig):
  """(negatives, provenance) for the no-LLM method."""
  ranks = select_window([0] * len(candidates), [c.similarity for c in candidates], positive_score,
                        config)
  chosen = [candidates[r] for r in ranks]
  return chosen, {"positive_similarity": round(positive_score, 5),
                  "rank_window": list(config.rank_window), "margin_ratio": config.margin_ratio,
                  "scores": [{"rank": c.rank, "similarity": round(c.similarity, 5)} for c in chosen]}


def rank_positions(scores, tiebreak) -> np.ndarray:
  """1-based rank of each item when sorted by score descending (ties: lower tiebreak first)."""
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], tiebreak[i]))
  ranks = np.empty(len(scores), np.int64)
  ranks[order] = np.arange(1, len(scores) + 1)
  return ranks


def reciprocal_rank_fusion(score_lists, tiebreak, k: int = 60) -> np.ndarray:
  """RRF(d) = sum over rankings r of 1 / (k + rank_r(d)) (Cormack et al., 2009)."""
  fused = np.zeros(len(tiebreak))
  for scores in score_lists:
    fused += 1.0 / (k + rank_positions(scores, tiebreak))
  return fused


def fuse_candidates(candidates, relevance, likelihood, rrf_k):
  """Candidates (in embedding order) with both scores -> (candidate, rrf, relevance, likelihood)
  sorted best first."""
  tiebreak = list(range(len(candidates)))
  fused = reciprocal_rank_fusion([relevance, likelihood], tiebreak, rrf_k)
  order = sorted(tiebreak, key=lambda i: (-fused[i], i))
  return [(candidates[i], float(fused[i]), relevance[i], likelihood[i]) for i in order]


def random_negatives(num_docs: int, exclude: list[int], n: int, rng: np.random.Generator):
  allowed = num_docs - len(set(exclude))
  if allowed <= 0:
    return []
  chosen: list[int] = []
  excluded = set(exclude)
  while len(chosen) < min(n, allowed):
    i = int(rng.integers(num_docs))
    if i not in excluded and i not in chosen:
      chosen.append(i)
  return chosen


def llm_candidates(row: dict, candidates: list[Candidate], config: MiningConfig) -> list[Candidate]:
  """What the LLM scores for a row: the rank window, and the positive itself when relabelling."""
  start, end = config.rank_window
  chosen = [c for c in candidates if start <= c.rank < end]
  if config.relabel_positive:
    chosen = [Candidate(row["positive"], row.get("title") or "", -1, float("nan"))] + chosen
  return chosen


def llm_requests(query: str, candidates: list[Candidate]) -> list[tuple]:
  """Two requests per candidate: graded relevance and query likelihood."""
  requests = []
  for c in candidates:
    requests.append((prompts.relevance_messages(query, c.passage), prompts.parse_relevance))
    requests.append((prompts.likelihood_messages(query, c.passage), prompts.parse_likelihood))
  return requests


def llm_negatives(row: dict, candidates: list[Candidate], results, config: MiningConfig):
  """(negatives, new positive or None, provenance, errors) from the two scores per candidate
  (`results`: two per candidate, in llm_requests order). The lowest fused become negatives."""
  scored, relevance, likelihood, errors = [], [], [], []
  for j, c in enumerate(candidates):
    a, b = results[2 * j], results[2 * j + 1]
    if a.ok and b.ok:
      scored.append(c)
      relevance.append(a.value)
      likelihood.append(b.value)
    else:
      errors.append(a.error or b.error)
  fused = fuse_candidates(scored, relevance, likelihood, config.rrf_k)
  new_positive = None
  if config.relabel_positive and fused and fused[0][0].rank != -1:
    new_positive = fused[0][0]
  pool = [f for f in fused if f[0].rank != -1 and f[0] is not new_positive]
  chosen = list(reversed(pool))[:config.num_negatives]  # lowest fused first
  provenance = {"rrf_k": config.rrf_k, "scores": [
      {"rank": c.rank, "rrf": round(f, 6), "relevance": r, "likelihood": l}
      for c, f, r, l in chosen]}
  if new_positive is not None:
    provenance["relabelled_from"] = row["positive"]
  return [c for c, *_ in chosen], new_positive, provenance, errors


def mined_row(row: dict, negatives: list[Candidate], provenance: dict,
              new_positive: Candidate | None = None) -> dict:
  """The output row: the input's fields, its new negatives, and where they came from."""
  out = {k: v for k, v in row.items() if k not in ("negative", "negatives", "mined")}
  if new_positive is not None:
    out["positive"], out["title"] = new_positive.text, new_positive.title
  if not out.get("title"):
    out.pop("title", None)
  out["negatives"] = [c.text for c in negatives]
  out["mined"] = provenance
  return out


def count_row(counts: dict, row: dict, wanted: int):
  counts["negatives"] += len(row["negatives"])
  counts["rows_with_negatives"] += bool(row["negatives"])
  counts["short_of_negatives"] += len(row["negatives"]) < wanted


def mine(rows: list[dict], corpus: Corpus, positive_ids: list[int], *, encoder, config: MiningConfig,
         model_name: str, work_dir: str, client=None, query_task: str | None = None,
         progress: bool = True) -> tuple[list[dict], dict]:
  """Mined rows (input order) and the run's counts."""
  queries, row_query, exclude = query_groups(rows, positive_ids, corpus)
  counts = {"rows": len(rows), "queries": len(queries), "corpus": len(corpus.texts),
            "rows_with_negatives": 0, "negatives": 0, "short_of_negatives": 0}
  provenance = {"model": model_name, "method": config.method}
  out_rows = []
  if config.method == "random":
    for i, row in enumerate(rows):
      rng = np.random.default_rng([config.seed, i])
      ids = random_negatives(len(corpus.texts), exclude[row_query[i]], config.num_negatives, rng)
      negatives = [Candidate(corpus.texts[j], corpus.titles[j], -1, float("nan")) for j in ids]
      out_rows.append(mined_row(row, negatives, dict(provenance, seed=config.seed)))
      count_row(counts, out_rows[-1], config.num_negatives)
    return out_rows, counts

  info, digest = encoder.info, params_digest(encoder.params)
  corpus_emb = embed_to_file(encoder, [info.format_document(t, ti or None)
                                       for t, ti in zip(corpus.texts, corpus.titles)],
                             os.path.join(work_dir, "corpus_embeddings.npy"), progress=progress,
                             desc="embedding corpus", model_digest=digest)
  query_emb = embed_to_file(encoder, [info.format_query(q, query_task) for q in queries],
                            os.path.join(work_dir, "query_embeddings.npy"), progress=progress,
                            desc="embedding queries", model_digest=digest)
  scores, ids = top_k(query_emb, corpus_emb, max(config.top_k, config.rank_window[1]), exclude,
                      progress=progress)
  positive_scores = np.einsum("nd,nd->n", np.asarray(query_emb[row_query]),
                              np.asarray(corpus_emb[positive_ids]))
  neighbours = [[Candidate(corpus.texts[j], corpus.titles[j], r, float(s))
                 for r, (j, s) in enumerate(zip(ids[q], scores[q])) if j >= 0]
                for q in range(len(queries))]

  if config.method == "window":
    for i, row in enumerate(rows):
      negatives, details = window_negatives(neighbours[row_query[i]], float(positive_scores[i]),
                                            config)
      out_rows.append(mined_row(row, negatives, dict(provenance, **details)))
      count_row(counts, out_rows[-1], config.num_negatives)
    return out_rows, counts

  # method == "llm": each row's candidates (and its positive when relabelling), scored twice.
  if client is None:
    raise ValueError("--method llm needs an LLM endpoint (--llm-base-url, --llm-model)")
  row_candidates = [llm_candidates(row, neighbours[row_query[i]], config)
                    for i, row in enumerate(rows)]
  results = client.map([r for row, cands in zip(rows, row_candidates)
                        for r in llm_requests(row["query"], cands)], desc="scoring neighbours")
  provenance.update(prompts_sha256=prompts.prompts_hash(*prompts.MINING_PROMPTS),
                    llm_model=client.config.model)
  counts.update(llm_failures=0, relabelled=0)
  failures, offset = [], 0
  for i, row in enumerate(rows):
    n = 2 * len(row_candidates[i])
    negatives, new_positive, details, errors = llm_negatives(
        row, row_candidates[i], results[offset:offset + n], config)
    offset += n
    counts["llm_failures"] += len(errors)
    counts["relabelled"] += new_positive is not None
    failures += [{"row": i, "error": e} for e in errors]
    out_rows.append(mined_row(row, negatives, dict(provenance, **details), new_positive))
    count_row(counts, out_rows[-1], config.num_negatives)
  counts["failures"] = failures[:1000]
  return out_rows, counts


def write_jsonl(path: str, rows: list[dict]):
  """Writes atomically: a killed run never leaves a truncated output behind."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def write_summary(path: str, summary: dict):
  with open(f"{path}.summary.json", "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
