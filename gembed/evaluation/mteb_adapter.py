"""A gembed model behind `mteb`'s (2.x) encoder protocol.

    import mteb
    from gembed.evaluation.mteb_adapter import GembedMtebEncoder
    model = GembedMtebEncoder("runs/demo@best")
    mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]))

mteb hands `encode` a DataLoader of batches ({"text": [...]}, corpus batches also carry
"title" and "body"). Queries get the model's query prompt with the task name that gembed uses for
the task's type; documents get its document format. Install with the `mteb` extra.
"""

from __future__ import annotations

import numpy as np

from gembed.evaluation.suite import PROMPT_TASK
from gembed.vectors import l2_normalize

# mteb task types -> gembed's evaluation types (for the prompt task).
_MTEB_TYPES = {"Retrieval": "retrieval", "Reranking": "reranking", "STS": "sts",
               "Classification": "classification", "MultilabelClassification": "classification",
               "Clustering": "clustering", "PairClassification": "pair_classification",
               "BitextMining": "bitext"}


class GembedMtebEncoder:
  """Implements mteb's EncoderProtocol (encode, similarity, similarity_pairwise)."""

  def __init__(self, model_name: str, revision: str | None = None, *, device: str | None = None,
               batch_size: int = 64, dim: int | None = None, **kwargs):
    del revision, device, kwargs  # JAX places arrays itself
    from gembed.encode import TextEncoder
    from gembed.formats import modeldir

    info, params = modeldir.load_model(modeldir.resolve_model_arg(model_name))
    self.model_name = model_name
    self.dim = dim
    self.encoder = TextEncoder(info, params, batch_size=batch_size)

  def encode(self, inputs, *, task_metadata, hf_split: str = "", hf_subset: str = "",
             prompt_type=None, **kwargs) -> np.ndarray:
    info = self.encoder.info
    task = PROMPT_TASK.get(_MTEB_TYPES.get(getattr(task_metadata, "type", ""), ""), info.default_task)
    formatted = []
    for batch in inputs:
      if str(getattr(prompt_type, "value", prompt_type)) == "document":
        bodies = batch.get("body") or batch["text"]
        titles = batch.get("title") or [""] * len(bodies)
        formatted += [info.format_document(b, t) for b, t in zip(bodies, titles)]
      else:
        texts = batch.get("query") or batch["text"]
        formatted += [info.format_query(t, task) for t in texts]
    return self.encoder.encode_formatted(formatted, dim=self.dim, normalize=info.normalize)

  def similarity(self, embeddings1, embeddings2) -> np.ndarray:
    return _unit(embeddings1) @ _unit(embeddings2).T

  def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
    return np.sum(_unit(embeddings1) * _unit(embeddings2), axis=-1)


def _unit(x) -> np.ndarray:
  return l2_normalize(np.atleast_2d(np.asarray(x, np.float32)))
