"""Metrics against hand-computed cases and scipy/scikit-learn; set discovery; published scores."""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score

from conftest import shared_data
from gembed.evaluation import metrics, suite
from gembed.vectors import l2_normalize


def test_ndcg_mrr_recall_by_hand():
  ranked = ["a", "b", "c"]
  rel = {"a": 1, "c": 2}
  # DCG = 1/log2(2) + 2/log2(4) = 2; IDCG = 2/log2(2) + 1/log2(3)
  assert metrics.ndcg_at_k(ranked, rel, 10) == pytest.approx(2 / (2 + 1 / np.log2(3)))
  scores = metrics.retrieval_scores([["x", "a"], ["b"]], [{"a": 1}, {"z": 1}])
  assert scores["mrr@10"] == pytest.approx(100 * (0.5 + 0) / 2)
  assert scores["recall@100"] == pytest.approx(50.0)


def test_sts_pair_bitext_against_references():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
  gold = rng.random(30)
  cos = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
  assert metrics.sts_spearman(a, b, gold)["spearman"] == pytest.approx(100 * stats.spearmanr(cos, gold).statistic)
  labels = rng.integers(0, 2, 30)
  ap = metrics.pair_classification_ap(a, b, labels)
  assert ap["ap_cosine"] == pytest.approx(100 * average_precision_score(labels, cos))
  assert ap["max_ap"] == max(v for k, v in ap.items() if k != "max_ap")
  perfect = metrics.bitext_f1(a, a + 1e-3 * b)
  assert perfect["f1"] == pytest.approx(100.0) and perfect["accuracy"] == pytest.approx(100.0)
  mirrored = metrics.bitext_f1(a, a[::-1])  # source i finds target 29 - i: never the gold line
  assert mirrored["accuracy"] == 0.0 and mirrored["f1"] == 0.0


def test_classification_undersampling_follows_mteb():
  labels = ["x"] * 20 + ["y"] * 5
  experiments = metrics.classification_experiments(labels, samples_per_label=3, n_experiments=4)
  for chosen in experiments:
    picked = [labels[i] for i in chosen]
    assert picked.count("x") == 3 and picked.count("y") == 3
  assert experiments[0] != experiments[1]  # the index array is reshuffled, carried across runs
  assert experiments == metrics.classification_experiments(labels, 3, 4)  # seed 42
  # Logistic regression on separable embeddings is perfect.
  emb = np.array([[1.0, 0.0] if l == "x" else [0.0, 1.0] for l in labels])
  acc = metrics.classification_accuracy(emb, labels, emb, labels, experiments)
  assert acc["accuracy"] == pytest.approx(100.0)


def test_clustering_v_measure_perfect_clusters():
  emb = np.concatenate([np.random.default_rng(2).normal(c, 0.01, size=(10, 3)) for c in (0, 5, 10)])
  labels = [0] * 10 + [1] * 10 + [2] * 10
  assert metrics.clustering_v_measure(emb, labels) == pytest.approx(100.0)


def test_discover_nested_layout(tmp_path):
  (tmp_path / "sts" / "a").mkdir(parents=True)
  (tmp_path / "sts" / "a" / "test.jsonl").write_text("{}\n")
  (tmp_path / "sts" / "a" / "dev.jsonl").write_text("{}\n")
  (tmp_path / "sts" / "multi").mkdir()
  (tmp_path / "sts" / "multi" / "en-de.jsonl").write_text("{}\n")
  (tmp_path / "classification" / "c" / "fr").mkdir(parents=True)
  for f in ("train.jsonl", "test.jsonl"):
    (tmp_path / "classification" / "c" / "fr" / f).write_text("{}\n")
  (tmp_path / "retrieval" / "r").mkdir(parents=True)
  (tmp_path / "retrieval" / "r" / "corpus.jsonl").write_text("{}\n")
  names = [s.name for s in suite.discover(str(tmp_path))]
  assert names == ["retrieval/r", "sts/a", "sts/multi/en-de", "classification/c/fr"]
  dev = {s.name: s.path for s in suite.discover(str(tmp_path), split="dev")}
  assert dev["sts/a"].endswith("dev.jsonl")
  by_name = {x.name: x for x in suite.discover(str(tmp_path))}
  assert suite.prompt_task(by_name["sts/a"]) == "sentence similarity"
  assert suite.prompt_task(by_name["sts/multi/en-de"], {"sts": "x", "sts/multi": "y"}) == "y"
  assert suite.prompt_task(by_name["retrieval/r"], {"sts": "x"}) == "search result"
  with pytest.raises(ValueError, match="no evaluation set matches"):
    suite.select(suite.discover(str(tmp_path)), ["sts/zzz"])


class _FakeEmbedder:
  """Bag-of-letters embeddings: deterministic, model-free."""

  def _embed(self, texts):
    out = np.zeros((len(texts), 26))
    for i, t in enumerate(texts):
      for ch in t.lower():
        if "a" <= ch <= "z":
          out[i, ord(ch) - 97] += 1
    return out + 1e-3

  def queries(self, texts, task):
    return self._embed(texts)

  def documents(self, texts, titles=None):
    return self._embed(texts)


def test_results_schema_and_reports(tmp_path):
  from gembed.evaluation import report

  r = tmp_path / "retrieval" / "toy"
  r.mkdir(parents=True)
  (r / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                          for i, t in enumerate(["apple pie", "zebra zoo", "kiwi"])))
  (r / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "zoo zebra"}) + "\n")
  (r / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  results = suite.evaluate(_FakeEmbedder(), suite.discover(str(tmp_path)), dims=[26, 8])
  task = results["tasks"]["retrieval/toy"]
  assert task["main_metric"] == "ndcg@10" and task["main_score"]["26"] == pytest.approx(100.0)
  assert set(results["task_mean"]) == {"26", "8"}
  report.write_results({"model": "fake", **results}, str(tmp_path / "out"))
  assert json.loads((tmp_path / "out" / "results.json").read_text())["dims"] == [26, 8]
  assert (tmp_path / "out" / "retrieval.png").stat().st_size > 1000
  assert "retrieval/toy" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_minilm_reproduces_published_mteb_scores(minilm):
  from gembed.encode import TextEncoder

  data = shared_data("")
  sets = suite.select(suite.discover(str(data)), ["sts/stsb", "sts/sts12", "sts/sts13", "sts/sts14",
                                                  "sts/sts15", "classification/banking77"])
  info, params = minilm
  results = suite.evaluate(suite.ModelEmbedder(TextEncoder(info, params, batch_size=128)), sets, [384])
  score = {k: v["main_score"]["384"] for k, v in results["tasks"].items()}
  assert score["sts/stsb"] == pytest.approx(82.03, abs=0.1)
  for name, published in (("sts12", 72.37), ("sts13", 80.60), ("sts14", 75.59), ("sts15", 85.39)):
    assert score[f"sts/{name}"] == pytest.approx(published, abs=0.2), name
  assert score["classification/banking77"] == pytest.approx(80.04, abs=1.0)
