"""`gembed teacher-embed`: a distillation config's teacher embeds every text of its training
data once, into a store (gembed.data.teacher_store) that `distill.teacher_embeddings` then
streams to the student's steps instead of running the teacher in each of them (docs/distill.md).

The texts are those the student will see: the config's tasks, prompts (task-string dropout
included: its draw is a hash of the row) and hard-negative slots; queries cut at
data.query_length tokens, documents at data.document_length, each distinct text embedded once.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from gembed.data import mixture
from gembed.data.tasks import formatted_texts
from gembed.data.teacher_store import DOCUMENT, QUERY, text_key, write
from gembed.encode import TextEncoder
from gembed.formats import modeldir

log = logging.getLogger(__name__)


def teacher_embed(config, out_dir: str, batch_size: int = 128, progress: bool = False) -> dict:
  """Writes the store of `config`'s distill.teacher over its data.tasks; returns its manifest
  with the wall time."""
  if not config.distill.teacher:
    raise ValueError("gembed teacher-embed: the config names no distill.teacher")
  start = time.perf_counter()
  spec = modeldir.resolve_model_arg(config.distill.teacher)
  info, params = modeldir.load_model(spec)
  d = config.data
  tasks = mixture.register_tasks(config, info.tokenizer_file, mixture.task_specs(config))
  queries, documents = set(), set()
  for task in tasks:
    q, docs = formatted_texts(task, d.num_negatives)
    queries |= q
    documents |= docs
  keys, embeddings = [], []
  for side, texts, length in ((QUERY, queries, d.query_length),
                              (DOCUMENT, documents, d.document_length)):
    texts = sorted(texts)
    log.info("teacher %s: embedding %d distinct %s texts at %d tokens", spec, len(texts), side,
             length)
    encoder = TextEncoder(info, params, batch_size=batch_size, max_length=length)
    embeddings.append(encoder.embed_raw([t.decode("utf-8") for t in texts], progress))
    keys += [text_key(side, t) for t in texts]
  manifest = write(out_dir, np.asarray(keys, np.int64), np.concatenate(embeddings), teacher=spec,
                   query_length=d.query_length, document_length=d.document_length)
  manifest["seconds"] = round(time.perf_counter() - start, 1)
  log.info("wrote %d teacher embeddings (%d-d) to %s in %.0f s", manifest["count"],
           manifest["dim"], out_dir, manifest["seconds"])
  return manifest
