"""The MTEB-style suite: find evaluation sets in a directory, score them at every MRL dimension.

Evaluators take an `Embedder` (queries/documents -> full-width embeddings), never a model, so
they run with any encoder. Every distinct text is encoded once per set; smaller dimensions
are prefixes of the same embeddings, re-normalised.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections import defaultdict
from typing import Protocol

import numpy as np

from gembed.evaluation import metrics
from gembed.textio import iter_jsonl
from gembed.vectors import l2_normalize, top_k

log = logging.getLogger(__name__)

TASK_TYPES = ("retrieval", "reranking", "sts", "classification", "clustering",
              "pair_classification", "bitext")
MAIN_METRIC = {"retrieval": "ndcg@10", "reranking": "map", "sts": "spearman",
               "classification": "accuracy", "clustering": "v_measure",
               "pair_classification": "max_ap", "bitext": "f1"}
# Prompt task per type (method.md section 1); symmetric types prompt both sides alike.
PROMPT_TASK = {"retrieval": "search result", "reranking": "search result",
               "sts": "sentence similarity", "classification": "classification",
               "clustering": "clustering", "pair_classification": "sentence similarity",
               "bitext": "sentence similarity"}
PROMPT_TASK_BY_NAME = {"retrieval/cosqa": "code retrieval"}


class Embedder(Protocol):
  def queries(self, texts: list[str], task: str) -> np.ndarray: ...
  def documents(self, texts: list[str], titles: list[str] | None = None) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class EvalSet:
  name: str  # "<type>/<name>[/<subset>]"
  type: str
  path: str  # a directory (retrieval) or a file


def _samples_per_label(name: str) -> int:
  if "emotion" in name:
    return 16
  if "sentiment" in name or "counterfactual" in name:
    return 32
  return 8


def discover(data_dir: str, split: str = "test") -> list[EvalSet]:
  """Every evaluation set under `data_dir` (layout of shared/data), nested subsets included."""
  found = []
  for task_type in TASK_TYPES:
    root = os.path.join(data_dir, task_type)
    if not os.path.isdir(root):
      continue
    for dirpath, dirnames, filenames in sorted(os.walk(root, followlinks=True)):
      dirnames.sort()
      rel = os.path.relpath(dirpath, data_dir).replace(os.sep, "/")
      if task_type == "retrieval":
        if "corpus.jsonl" in filenames:
          found.append(EvalSet(rel, task_type, dirpath))
        continue
      if task_type == "classification":
        if "train.jsonl" in filenames and "test.jsonl" in filenames:
          found.append(EvalSet(rel, task_type, dirpath))
        continue
      if f"{split}.jsonl" in filenames:
        found.append(EvalSet(rel, task_type, os.path.join(dirpath, f"{split}.jsonl")))
      elif not ({"train.jsonl", "dev.jsonl", "test.jsonl"} & set(filenames)):
        for f in sorted(filenames):  # one file per subset: sts17/en-de.jsonl, tatoeba/afr-eng.jsonl
          if f.endswith(".jsonl"):
            found.append(EvalSet(f"{rel}/{f[:-6]}", task_type, os.path.join(dirpath, f)))
  return found


def select(sets: list[EvalSet], patterns: list[str] | None) -> list[EvalSet]:
  if not patterns:
    return sets
  chosen = [s for s in sets if any(s.name == p or s.name.startswith(p.rstrip("/") + "/") for p in patterns)]
  unknown = [p for p in patterns if not any(s.name == p or s.name.startswith(p.rstrip("/") + "/") for s in sets)]
  if unknown:
    raise ValueError(f"no evaluation set matches {unknown}; found: {[s.name for s in sets][:20]} ...")
  return chosen


def _rows(path, limit=0):
  rows = [row for _, row in iter_jsonl(path)]
  return rows[:limit] if limit else rows


def _at_dims(embeddings: list[np.ndarray], dims: list[int]):
  for dim in dims:
    yield dim, [l2_normalize(e[:, :dim]) for e in embeddings]


def prompt_task(s: EvalSet, overrides: dict[str, str] | None = None) -> str:
  """The prompt task of a set: the longest matching override (set name, prefix or type), else
  the built-in choice for its name or type."""
  for key in sorted(overrides or {}, key=len, reverse=True):
    if s.name == key or s.name.startswith(key.rstrip("/") + "/"):
      return overrides[key]
  return PROMPT_TASK_BY_NAME.get(s.name, PROMPT_TASK[s.type])


# Symmetric sets of aligned pairs: (first field, second field, metrics of (emb1, emb2, rows)).
_PAIR_SETS = {
    "sts": ("sentence1", "sentence2",
            lambda a, b, rows: metrics.sts_spearman(a, b, [float(r["score"]) for r in rows])),
    "pair_classification": ("sentence1", "sentence2", lambda a, b, rows: metrics.pair_classification_ap(
        a, b, [int(r["label"]) for r in rows])),
    "bitext": ("source", "target", lambda a, b, rows: metrics.bitext_f1(a, b)),
}


def evaluate_set(embedder: Embedder, s: EvalSet, dims: list[int], max_examples: int = 0,
                 prompt_overrides: dict[str, str] | None = None) -> dict:
  """{'type', 'main_metric', 'main_score': {dim: x}, 'metrics': {dim: {...}}} for one set."""
  task = prompt_task(s, prompt_overrides)
  per_dim = {}
  if s.type in _PAIR_SETS:
    first, second, score = _PAIR_SETS[s.type]
    rows = _rows(s.path, max_examples)
    e1 = embedder.queries([r[first] for r in rows], task)
    e2 = embedder.queries([r[second] for r in rows], task)
    for dim, (a, b) in _at_dims([e1, e2], dims):
      per_dim[dim] = score(a, b, rows)
  elif s.type == "clustering":
    sets = _rows(s.path)
    embedded = [(embedder.queries(c["sentences"], task), c["labels"]) for c in sets]
    for dim in dims:
      scores = [metrics.clustering_v_measure(l2_normalize(e[:, :dim]), labels)
                for e, labels in embedded]
      per_dim[dim] = {"v_measure": float(np.mean(scores)), "v_measure_std": float(np.std(scores))}
  elif s.type == "classification":
    train = _rows(os.path.join(s.path, "train.jsonl"))
    test = _rows(os.path.join(s.path, "test.jsonl"), max_examples)
    train_labels = [r["label"] for r in train]
    experiments = metrics.classification_experiments(train_labels, _samples_per_label(s.name))
    used = sorted({i for chosen in experiments for i in chosen})  # encode only what is fitted
    position = {i: n for n, i in enumerate(used)}
    train_emb = embedder.queries([train[i]["text"] for i in used], task)
    test_emb = embedder.queries([r["text"] for r in test], task)
    remapped = [[position[i] for i in chosen] for chosen in experiments]
    used_labels = [train_labels[i] for i in used]
    for dim, (a, b) in _at_dims([train_emb, test_emb], dims):
      per_dim[dim] = metrics.classification_accuracy(a, used_labels, b, [r["label"] for r in test],
                                                     remapped)
  elif s.type == "retrieval":
    per_dim = _retrieval(embedder, s, dims, task, max_examples)
  elif s.type == "reranking":
    rows = _rows(s.path, max_examples)
    q = embedder.queries([r["query"] for r in rows], task)
    cands = [(r["positive"] + r["negative"], [1] * len(r["positive"]) + [0] * len(r["negative"]))
             for r in rows]
    emb = [embedder.documents(c) for c, _ in cands]
    for dim in dims:
      qd = l2_normalize(q[:, :dim])
      per_dim[dim] = {"map": metrics.mean_average_precision(
          qd, [(e[:, :dim], np.asarray(rel)) for e, (_, rel) in zip(emb, cands)])}
  main = MAIN_METRIC[s.type]
  return {"type": s.type, "main_metric": main,
          "main_score": {str(d): float(per_dim[d][main]) for d in dims},
          "metrics": {str(d): {k: float(v) for k, v in per_dim[d].items()} for d in dims}}


def _retrieval(embedder, s, dims, task, max_queries):
  corpus = _rows(os.path.join(s.path, "corpus.jsonl"))
  queries = _rows(os.path.join(s.path, "queries.jsonl"))
  qrels = defaultdict(dict)
  with open(os.path.join(s.path, "qrels.tsv"), encoding="utf-8") as f:
    reader = csv.reader(f, delimiter="\t")
    next(reader)  # header: query-id corpus-id score
    for qid, did, score in reader:
      qrels[qid][did] = int(score)
  queries = [q for q in queries if q["_id"] in qrels]
  if max_queries:
    queries = queries[:max_queries]
  doc_ids = [d["_id"] for d in corpus]
  doc_emb = embedder.documents([d["text"] for d in corpus], [d.get("title") or "" for d in corpus])
  q_emb = embedder.queries([q["text"] for q in queries], task)
  per_dim = {}
  for dim in dims:
    _, top = top_k(l2_normalize(q_emb[:, :dim]), l2_normalize(doc_emb[:, :dim]), k=100)
    ranked = [[doc_ids[i] for i in row if i >= 0] for row in top]
    per_dim[dim] = metrics.retrieval_scores(ranked, [qrels[q["_id"]] for q in queries])
  return per_dim


def evaluate(embedder: Embedder, sets: list[EvalSet], dims: list[int], max_examples: int = 0,
             progress: bool = False, prompt_overrides: dict[str, str] | None = None) -> dict:
  """Scores every set at every dim, plus task and type means (contracts.md results.json)."""
  tasks = {}
  iterator = sets
  if progress:
    from tqdm import tqdm
    iterator = tqdm(sets, unit="set", dynamic_ncols=True)
  for s in iterator:
    log.info("evaluating %s", s.name)
    tasks[s.name] = evaluate_set(embedder, s, dims, max_examples, prompt_overrides)
  task_mean, type_mean = {}, {}
  for d in map(str, dims):
    scores = [t["main_score"][d] for t in tasks.values()]
    task_mean[d] = float(np.mean(scores)) if scores else float("nan")
    by_type = defaultdict(list)
    for t in tasks.values():
      by_type[t["type"]].append(t["main_score"][d])
    type_mean[d] = float(np.mean([np.mean(v) for v in by_type.values()])) if by_type else float("nan")
  return {"dims": list(dims), "tasks": tasks, "task_mean": task_mean, "type_mean": type_mean}


def main_score(results: dict, metric: str = "task_mean", dim: int | None = None) -> float:
  """One number from `evaluate`'s results: task_mean, type_mean, or one set's main score, at
  `dim` (default: the largest evaluated)."""
  dim = str(dim if dim is not None else results["dims"][0])
  if metric in ("task_mean", "type_mean"):
    return float(results[metric][dim])
  if metric not in results["tasks"]:
    raise ValueError(f"metric {metric!r}: not task_mean, type_mean or an evaluated set "
                     f"({', '.join(results['tasks'])})")
  return float(results["tasks"][metric]["main_score"][dim])


class ModelEmbedder:
  """Embedder over a gembed TextEncoder: the model's prompts, distinct texts encoded once."""

  def __init__(self, encoder, progress: bool = False):
    self.encoder = encoder
    self.progress = progress

  def _embed(self, formatted: list[str]) -> np.ndarray:
    unique = list(dict.fromkeys(formatted))
    emb = self.encoder.embed_raw(unique, progress=self.progress)
    row = {t: i for i, t in enumerate(unique)}
    return emb[[row[t] for t in formatted]]

  def queries(self, texts, task):
    return self._embed([self.encoder.info.format_query(t, task) for t in texts])

  def documents(self, texts, titles=None):
    titles = titles or [""] * len(texts)
    return self._embed([self.encoder.info.format_document(t, ti) for t, ti in zip(texts, titles)])
