"""Classification sets as contrastive tasks: rows, determinism, and the same-label mask."""

import json
import os

import numpy as np
import pytest

from gembed.data import labelled
from gembed.textio import InputError

WORDS = "red green blue cyan gold gray pink plum teal navy lime rose".split()
LABELS = ("sport", "world_news", "science")


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def _labelled_file(tmp_path, n=24):
  rng = np.random.default_rng(0)
  rows = [{"text": f"{' '.join(rng.choice(WORDS, 3))} item {i}", "label": LABELS[i % 3]}
          for i in range(n)]
  return _write(tmp_path / "train.jsonl", rows), {r["text"]: r["label"] for r in rows}


def test_classification_rows_pair_text_with_label_and_other_labels(tmp_path):
  path, label_of = _labelled_file(tmp_path)
  rows = labelled.read_labelled_rows([path], "classification", num_negatives=2, seed=0)
  assert len(rows) == 24
  for q, p, pid, negs, valid in zip(rows.query, rows.positive, rows.positive_id, rows.negatives,
                                    rows.negative_valid):
    assert p == labelled.label_text(label_of[q]) and pid == f"label:{label_of[q]}"
    assert valid.all() and len(set(negs)) == 2 and p not in negs
    assert set(negs) <= {labelled.label_text(x) for x in LABELS}
  assert "world news" in set(rows.positive)  # label identifiers read as words


def test_clustering_rows_pair_texts_of_one_label_deterministically(tmp_path):
  path, label_of = _labelled_file(tmp_path)
  rows = labelled.read_labelled_rows([path], "clustering", num_negatives=1, seed=0)
  for q, p, pid, negs in zip(rows.query, rows.positive, rows.positive_id, rows.negatives):
    assert p != q and label_of[p] == label_of[q] and pid == f"label:{label_of[q]}"
    assert label_of[negs[0]] != label_of[q]
  again = labelled.read_labelled_rows([path], "clustering", num_negatives=1, seed=0)
  other = labelled.read_labelled_rows([path], "clustering", num_negatives=1, seed=1)
  assert again.positive.tolist() == rows.positive.tolist()
  assert again.negatives.tolist() == rows.negatives.tolist()
  assert other.positive.tolist() != rows.positive.tolist()
  # A label with a single text has nothing to pair with: that text is dropped.
  lonely = _write(tmp_path / "lonely.jsonl", [{"text": "a b", "label": "x"}, {"text": "c d", "label": "x"},
                                              {"text": "e f", "label": "y"}])
  rows = labelled.read_labelled_rows([lonely], "clustering", num_negatives=1, seed=0)
  assert sorted(rows.query.tolist()) == ["a b", "c d"] and rows.negatives.tolist() == [["e f"]] * 2


def test_bad_labelled_rows_name_file_and_line(tmp_path):
  path = _write(tmp_path / "bad.jsonl", [{"text": "fine", "label": "a"}, {"text": "", "label": "b"},
                                         {"text": "no label"}, {"text": "ok", "label": 3}])
  with pytest.raises(InputError, match=r"bad.jsonl:2: field 'text' must be a non-empty string"):
    labelled.read_labelled_rows([path], "classification", num_negatives=0)
  rows = labelled.read_labelled_rows([path], "classification", num_negatives=0, skip_bad_rows=True)
  assert rows.query.tolist() == ["fine", "ok"]
  assert [line.split(": ", 1)[0] for line in rows.bad_rows] == [f"{path}:2", f"{path}:3"]
  one = _write(tmp_path / "one.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "a"}])
  with pytest.raises(InputError, match="at least two labels"):
    labelled.read_labelled_rows([one], "clustering", num_negatives=1)


def _reference_nce(q, p, n, labels, temperature):
  """NumPy: row i's denominator holds its own positive, its hard negative and the positives of
  rows with another label; same-label columns are left out."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  q, p, n = unit(q), unit(p), unit(n)
  losses = []
  for i in range(len(q)):
    columns = [j for j in range(len(q)) if j == i or labels[j] != labels[i]]
    logits = [q[i] @ p[j] / temperature for j in columns] + [q[i] @ n[i, 0] / temperature]
    own = q[i] @ p[i] / temperature
    losses.append(np.log(np.sum(np.exp(np.asarray(logits, np.float64)))) - own)
  return float(np.mean(losses))


@pytest.mark.parametrize("kind", labelled.KINDS)
def test_mask_drops_same_label_columns_of_a_pipeline_batch(tmp_path, minilm_dir, kind):
  import jax.numpy as jnp

  from gembed.data import mixture, sources, tasks
  from gembed.losses import nce_loss
  from gembed.tokenizer import Tokenizer

  path, label_of = _labelled_file(tmp_path)
  tokenizer_file = os.path.join(minilm_dir, "tokenizer.json")
  spec = sources.TaskSpec(f"labelled_{kind}", (path,), prompt_task=kind, source=kind)
  task = tasks.register_task(spec, tokenizer_file=tokenizer_file, query_length=16,
                             document_length=16, num_negatives=1, query_prompt="",
                             document_format="")
  ds = mixture.make_mixture([task], np.ones(1), host_batch_size=8, seed=0, shard_index=0,
                            num_shards=1, shuffle_buffer=64, query_length=16, document_length=16,
                            num_negatives=1, pad_id=0)
  batch = {k: v.numpy() for k, v in next(iter(ds)).items()}
  tok = Tokenizer(tokenizer_file, 16)
  queries = [tok.decode(ids[m > 0].tolist())[len("[CLS] "):-len(" [SEP]")]
             for ids, m in zip(batch["query_ids"], batch["query_mask"])]
  labels = [label_of[q] for q in queries]
  assert len(set(labels)) < len(labels)  # 8 rows, 3 labels: same-label columns exist

  table = np.random.default_rng(1).normal(size=(30522, 16)).astype(np.float32)

  def embed(ids, mask):  # bag of tokens: equal texts embed equally
    return (table[ids] * mask[..., None]).sum(-2) / mask.sum(-1, keepdims=True)

  q = embed(batch["query_ids"], batch["query_mask"])
  p = embed(batch["positive_ids"], batch["positive_mask"])
  n = embed(batch["negative_ids"], batch["negative_mask"])
  loss, _ = nce_loss(jnp.asarray(q), jnp.asarray(p), jnp.asarray(n),
                     jnp.asarray(batch["negative_valid"]), query_keys=jnp.asarray(batch["query_key"]),
                     positive_keys=jnp.asarray(batch["positive_key"]), temperature=0.05)
  expected = _reference_nce(q, p, n, labels, 0.05)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  unmasked, _ = nce_loss(jnp.asarray(q), jnp.asarray(p), jnp.asarray(n),
                         jnp.asarray(batch["negative_valid"]), query_keys=jnp.arange(8),
                         positive_keys=jnp.arange(8), temperature=0.05)
  assert float(unmasked) > expected + 1e-3  # the same-label columns were really dropped
