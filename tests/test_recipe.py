"""`gembed recipe` end to end on a tiny model and a tiny shared-data layout; the held-out check."""

import json
import os

import numpy as np
import pytest

from gembed import recipe
from gembed.tools.bench import quality
from gembed.evaluation import suite
from gembed.textio import InputError
from tiny import make_tiny_bert_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("cat dog bird fish tree house car road sun moon star river hill sea rain snow wind "
         "stone lake field").split()


def _config(arg=None):
  from configs import recipe as recipe_config
  return recipe_config.get_config(arg)


def _write(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def _sentence(rng, n=5):
  return " ".join(rng.choice(WORDS, n))


def _layout(base, rng):
  """A tiny data_dir in the layout of shared/data, and a demo corpus, with disjoint texts."""
  data, demo = base / "data", base / "work" / "demo-data"
  tr = lambda i: f"train {i} " + _sentence(rng)  # noqa: E731  (training texts are marked)
  ev = lambda i: f"eval {i} " + _sentence(rng)  # noqa: E731
  for name in ("medquad-pairs", "snli-triples", "xnli-triples"):
    _write(data / "training" / f"{name}.jsonl",
           [{"query": tr(i), "positive": tr(i), "negative": tr(i)} for i in range(24)] +
           [{"query": "Good  Movie", "positive": tr(99)}])
  labels = ("joy", "anger", "sadness")
  for name in ("tweeteval-emotion", "tweeteval-sentiment", "xlmt-sentiment/en"):
    for split in ("train", "test"):
      _write(data / "classification" / name / f"{split}.jsonl",
             [{"text": (tr if split == "train" else ev)(i), "label": labels[i % 3]} for i in range(24)])
  _write(data / "sts" / "stsb" / "dev.jsonl",
         [{"sentence1": ev(i), "sentence2": ev(i), "score": float(i % 5)} for i in range(16)])
  _write(data / "sts" / "held" / "test.jsonl",
         [{"sentence1": ev(i), "sentence2": ev(i), "score": float(i % 5)} for i in range(16)])
  _write(data / "classification" / "held" / "train.jsonl",
         [{"text": ev(i), "label": labels[i % 3]} for i in range(24)])
  _write(data / "classification" / "held" / "test.jsonl",
         [{"text": ev(i), "label": labels[i % 3]} for i in range(12)] +
         [{"text": "good movie", "label": "joy"}])  # shared with training, but two words
  retrieval = data / "retrieval" / "held"
  _write(retrieval / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": ev(i)} for i in range(12)])
  _write(retrieval / "queries.jsonl", [{"_id": f"q{i}", "text": ev(i)} for i in range(6)])
  (retrieval / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                       "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
  for name in ("code", "docstrings"):
    _write(demo / "train" / f"{name}.jsonl", [{"query": tr(i), "positive": tr(i)} for i in range(24)])
  docs = demo / "dev" / "retrieval" / "python-docs"
  _write(docs / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": ev(i)} for i in range(8)])
  _write(docs / "queries.jsonl", [{"_id": f"q{i}", "text": ev(i)} for i in range(4)])
  (docs / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                  "".join(f"q{i}\td{i}\t1\n" for i in range(4)))
  (demo / "manifest.json").write_text("{}")
  return data


def test_recipe_runs_every_step_and_resumes(tmp_path, minilm_dir, caplog):
  rng = np.random.default_rng(0)
  data = _layout(tmp_path, rng)
  init = make_tiny_bert_dir(tmp_path / "tiny-bert", os.path.join(minilm_dir, "tokenizer.json"))
  config = _config("tiny")
  config.data_dir = str(data)
  config.init = init
  for stage in (config.stage1, config.finetune):
    stage.loss.mrl_dims = (32, 16, 8)
  config.eval.dims = (32, 16, 8)
  for stage in (config.stage1, config.finetune):
    stage.model.projection_dim = 32  # the fitted head is a rotation of the tiny width
  config.eval.tasks = ("sts/held", "classification/held", "retrieval/held")
  config.eval.dev_tasks = ("sts/stsb", "retrieval/python-docs", "classification/tweeteval-emotion")
  config.finetune.eval.tasks = config.eval.dev_tasks
  config.mine.top_k = 8
  config.mine.rank_window = (0, 8)
  config.mine.margin_ratio = 1.5  # random tiny embeddings: any neighbour may be a negative
  work = tmp_path / "work"

  results = recipe.run(config, str(work))
  assert list(results) == ["init", "head-init", "stage1", "ft-a", "ft-b", "soup"]
  for r in results.values():
    assert set(r["type_mean"]) == {"32", "16", "8"}
    assert set(r["tasks"]) == {"sts/held", "classification/held", "retrieval/held"}
  mined = [json.loads(line) for line in open(work / "mined" / "medquad.jsonl")]
  assert len(mined) == 25 and all(len(r["negatives"]) == 1 for r in mined)
  soup = json.loads((work / "soup" / "soup.json").read_text())
  assert soup["method"] == "greedy" and len(soup["steps"]) == 2
  report = (work / "report.md").read_text()
  for name in results:
    assert f"| {name} |" in report
  assert (work / "report.png").exists()
  # The task weights of ingredient ft-b reached its trainer.
  assert json.loads((work / "ft-b" / "config.json").read_text())["data"]["tasks"][0]["weight"] == 1.5

  caplog.clear()
  with caplog.at_level("INFO"):
    # `gembed bench quality` in the same workdir: the recipe's steps are all done (nothing is
    # trained again); the sentence-transformers peer trains on the same rows and is scored.
    both = quality.run(config, str(work))
  assert sum("already trained" in m for m in caplog.messages) == 3
  assert {n: both[n] for n in results} == json.loads(json.dumps(results))
  peer = both["peer"]
  assert set(peer["tasks"]) == set(results["init"]["tasks"]) and set(peer["type_mean"]) == {"32", "16", "8"}
  assert json.loads((work / "peer" / "2_Dense" / "config.json").read_text())["out_features"] == 32
  table = (work / "quality.md").read_text()
  assert "| peer |" in table and "| soup |" in table


def test_held_out_check_names_the_overlapping_set(tmp_path):
  rng = np.random.default_rng(1)
  data = _layout(tmp_path, rng)
  config = _config("tiny")
  paths = {"data": str(data), "demo": str(tmp_path / "work" / "demo-data" / "train"),
           "mined": str(tmp_path / "work" / "mined")}
  stage = recipe.resolve_stage(config.stage1, paths)
  held = suite.select(suite.discover(str(data)), ["sts/held", "classification/held"])
  checked = recipe.check_held_out([stage], held)
  assert checked == {"sts/held": 32, "classification/held": 37}
  leaked = json.loads((data / "classification" / "held" / "test.jsonl").read_text().splitlines()[3])
  with open(data / "training" / "medquad-pairs.jsonl", "a") as f:
    f.write(json.dumps({"query": "  " + leaked["text"].upper(), "positive": "x"}) + "\n")
  with pytest.raises(InputError, match=r"classification/held \(1 texts"):
    recipe.check_held_out([stage], held)
