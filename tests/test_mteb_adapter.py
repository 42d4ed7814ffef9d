"""The mteb adapter, called as mteb 2.x calls it: a torch DataLoader of batches."""

import types

import numpy as np
import torch

from gembed.encode import TextEncoder
from gembed.evaluation.mteb_adapter import GembedMtebEncoder


def _loader(rows, batch_size=3):
  def collate(items):
    return {k: [item[k] for item in items] for k in items[0]}
  return torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate)


def test_encode_as_mteb_does(minilm):
  model = GembedMtebEncoder("all-MiniLM-L6-v2", batch_size=8)
  texts = ["A man is playing a guitar.", "A woman slices an onion.", "Kids play football.",
           "The stock market fell.", "A person plays an instrument."]
  sts = types.SimpleNamespace(type="STS", name="STSBenchmark")
  emb = model.encode(_loader([{"text": t} for t in texts]), task_metadata=sts, hf_split="test",
                     hf_subset="default")
  info, params = minilm
  np.testing.assert_allclose(emb, TextEncoder(info, params).encode(texts), atol=1e-5)
  sims = model.similarity(emb, emb)
  assert sims.shape == (5, 5) and np.allclose(np.diag(sims), 1.0, atol=1e-5)
  assert sims[0, 4] > sims[0, 3]
  np.testing.assert_allclose(model.similarity_pairwise(emb, emb[::-1]),
                             np.sum(emb * emb[::-1], axis=1), atol=1e-6)
  # Corpus batches carry title/body; documents are joined as title + " " + body.
  retrieval = types.SimpleNamespace(type="Retrieval", name="NFCorpus")
  corpus = [{"text": "T body", "title": "T", "body": "body"}]
  doc = model.encode(_loader(corpus), task_metadata=retrieval, hf_split="test", hf_subset="default",
                     prompt_type=types.SimpleNamespace(value="document"))
  np.testing.assert_allclose(doc, TextEncoder(info, params).encode(["T body"]), atol=1e-5)
