"""MTEB-style metrics on embeddings (pure numpy / scikit-learn; scores on a 0-100 scale)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import stats
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, v_measure_score

from gembed.vectors import l2_normalize, top_k


def sts_spearman(emb1, emb2, gold) -> dict:
  cosine = np.sum(l2_normalize(emb1) * l2_normalize(emb2), axis=1)
  return {"spearman": 100 * stats.spearmanr(cosine, gold).statistic,
          "pearson": 100 * stats.pearsonr(cosine, gold).statistic}


def ndcg_at_k(ranked: list, relevance: dict, k: int = 10) -> float:
  """trec_eval's nDCG@k (linear gains), as MTEB computes it."""
  dcg = sum(relevance.get(doc, 0) / np.log2(i + 2) for i, doc in enumerate(ranked[:k]))
  ideal = sorted(relevance.values(), reverse=True)[:k]
  idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
  return dcg / idcg if idcg > 0 else 0.0


def retrieval_scores(ranked_lists: list[list], qrels: list[dict]) -> dict:
  """nDCG@10, MRR@10, recall@100 averaged over queries (0-100)."""
  ndcg, mrr, recall = [], [], []
  for ranked, rel in zip(ranked_lists, qrels):
    ndcg.append(ndcg_at_k(ranked, rel, 10))
    relevant = {d for d, g in rel.items() if g > 0}
    rr = 0.0
    for i, doc in enumerate(ranked[:10]):
      if doc in relevant:
        rr = 1.0 / (i + 1)
        break
    mrr.append(rr)
    recall.append(len(relevant & set(ranked[:100])) / max(len(relevant), 1))
  return {"ndcg@10": 100 * np.mean(ndcg), "mrr@10": 100 * np.mean(mrr),
          "recall@100": 100 * np.mean(recall)}


def undersample(labels, samples_per_label: int, idxs: np.ndarray, rng: np.random.RandomState):
  """MTEB's `_undersample_data`: shuffle the (carried) index array, keep the first n per label."""
  rng.shuffle(idxs)
  counts = defaultdict(int)
  chosen = []
  for i in idxs:
    if counts[labels[i]] < samples_per_label:
      chosen.append(i)
      counts[labels[i]] += 1
  return chosen


def classification_experiments(train_labels, samples_per_label: int, n_experiments: int = 10,
                               seed: int = 42) -> list[list[int]]:
  """The train indices of each experiment (one RandomState carried across experiments)."""
  rng = np.random.RandomState(seed)
  idxs = np.arange(len(train_labels))
  return [undersample(train_labels, samples_per_label, idxs, rng) for _ in range(n_experiments)]


def classification_accuracy(train_emb, train_labels, test_emb, test_labels, experiments,
                            seed: int = 42) -> dict:
  """Mean test accuracy (and macro F1) of logistic regression over the experiments."""
  accuracies, f1s = [], []
  for chosen in experiments:
    clf = LogisticRegression(max_iter=100, random_state=seed)
    clf.fit(train_emb[chosen], [train_labels[i] for i in chosen])
    pred = clf.predict(test_emb)
    accuracies.append(np.mean(pred == np.asarray(test_labels)))
    f1s.append(f1_score(test_labels, pred, average="macro"))
  return {"accuracy": 100 * float(np.mean(accuracies)), "f1": 100 * float(np.mean(f1s))}


def clustering_v_measure(embeddings, labels, seed: int = 42) -> float:
  n_clusters = len(set(labels))
  model = MiniBatchKMeans(n_clusters=n_clusters, batch_size=500, n_init="auto", random_state=seed)
  return 100 * v_measure_score(labels, model.fit_predict(embeddings))


def pair_classification_ap(emb1, emb2, labels) -> dict:
  """Average precision per similarity; MTEB's main score is the max over them."""
  a, b = l2_normalize(emb1), l2_normalize(emb2)
  similarities = {
      "cosine": np.sum(a * b, axis=1),
      "dot": np.sum(emb1 * emb2, axis=1),
      "euclidean": -np.linalg.norm(a - b, axis=1),
      "manhattan": -np.sum(np.abs(a - b), axis=1),
  }
  scores = {f"ap_{k}": 100 * average_precision_score(labels, v) for k, v in similarities.items()}
  scores["max_ap"] = max(scores.values())
  return scores


def bitext_f1(source_emb, target_emb) -> dict:
  """Nearest target of each source; gold is the aligned line (MTEB: weighted F1)."""
  _, index = top_k(l2_normalize(source_emb), l2_normalize(target_emb), k=1)
  predicted = index[:, 0]
  gold = np.arange(len(source_emb))
  return {"f1": 100 * f1_score(gold, predicted, average="weighted", zero_division=0),
          "accuracy": 100 * float(np.mean(predicted == gold))}


def mean_average_precision(query_emb, candidates: list[tuple[np.ndarray, np.ndarray]]) -> float:
  """Reranking MAP: per query, rank its candidates by cosine; relevance labels 0/1."""
  aps = []
  for q, (cand_emb, rel) in zip(l2_normalize(query_emb), candidates):
    if rel.sum() == 0:
      continue
    aps.append(average_precision_score(rel, l2_normalize(cand_emb) @ q))
  return 100 * float(np.mean(aps))
