"""The LLM data stage as Apache Beam pipelines, for corpora beyond one machine (docs/data-stage.md).

The same functions as the in-process commands run inside DoFns; Beam adds the distribution:

  mine:   inputs -> corpus (de-duplicated by normalised text) -> embed (batched DoFn, model loaded
          once per worker) -> blocks of corpus embeddings, a side input streamed past each batch
          of queries -> exact top-k per query -> window or LLM + RRF selection -> JSONL shards
  filter: inputs -> batches -> LLM judge -> JSONL shards
  synth retrieval: passages -> batches -> generate + rate -> JSONL shards

The LLM cache is the coordination point between workers and reruns: put it on a shared
filesystem or an object store (gs://) and a restarted job only sends what was never answered.
The DirectRunner (local, multi-threaded) is the default; Dataflow, Flink and Spark are chosen
with `--runner` and their options with `--beam-options`. Counts come back as Beam metrics and are
written to OUTPUT.summary.json. Output row order is not the input order.
"""

from __future__ import annotations

import json
import shlex

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from gembed.llmdata import mine as mining
from gembed.textio import text_identity
from gembed.vectors import top_k

NAMESPACE = "gembed"


def expand(pattern: str) -> list[str]:
  """The files a path or glob pattern names (local, gs://, ...), sorted."""
  matches = FileSystems.match([pattern])[0].metadata_list
  if not matches:
    raise FileNotFoundError(f"{pattern}: no such file")
  return sorted(m.path for m in matches)


def _read_bytes(path: str) -> bytes:
  with FileSystems.open(path) as f:
    return f.read()


def read_training_rows(path: str):
  yield from mining.iter_training_rows(path, _read_bytes(path))


def read_passages(path: str):
  yield from mining.read_passages(path, _read_bytes(path))


def read_passage_texts(path: str):
  for text, title in read_passages(path):
    yield f"{title}\n{text}" if title else text


class _Counted(beam.DoFn):
  """Adds a run's counts dict to Beam counters (summed over workers)."""

  def count(self, counts: dict):
    for name, value in counts.items():
      if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        Metrics.counter(NAMESPACE, name).inc(int(value))


class _WithEncoder(_Counted):

  def __init__(self, model: str, batch_size: int, max_length: int | None):
    self.model, self.batch_size, self.max_length = model, batch_size, max_length

  def setup(self):
    from gembed.encode import TextEncoder
    from gembed.formats import modeldir
    info, params = modeldir.load_model(modeldir.resolve_model_arg(self.model))
    self.encoder = TextEncoder(info, params, batch_size=self.batch_size, max_length=self.max_length)


class EmbedDocuments(_WithEncoder):
  """[(key, (text, title))] -> (key, text, title, unit vector) for each."""

  def process(self, batch):
    info = self.encoder.info
    vectors = self.encoder.encode_formatted(
        [info.format_document(text, title or None) for _, (text, title) in batch])
    for (key, (text, title)), vector in zip(batch, vectors):
      yield key, text, title, vector


class SearchQueries(_WithEncoder):
  """[(query key, rows)] + corpus blocks -> (rows, neighbours, positive similarity per row)."""

  def __init__(self, model, batch_size, max_length, k: int, query_task: str | None):
    super().__init__(model, batch_size, max_length)
    self.k, self.query_task = k, query_task

  def process(self, batch, blocks):
    groups = [rows for _, rows in batch]
    queries = [rows[0]["query"] for rows in groups]
    excluded = [{text_identity(r["positive"]) for r in rows} | {text_identity(rows[0]["query"])}
                for rows in groups]
    vectors = self.encoder.encode_formatted(
        [self.encoder.info.format_query(q, self.query_task) for q in queries])
    found = [[] for _ in groups]  # (score, text, title) per query, merged across blocks
    positive_sims = [{} for _ in groups]
    for block in blocks:
      keys = [key for key, *_ in block]
      matrix = np.stack([vector for *_, vector in block])
      column = {key: c for c, key in enumerate(keys)}
      exclude = [[column[key] for key in e if key in column] for e in excluded]
      scores, ids = top_k(vectors, matrix, self.k, exclude)
      for q, rows in enumerate(groups):
        found[q] += [(float(s), block[j][1], block[j][2]) for s, j in zip(scores[q], ids[q]) if j >= 0]
        found[q] = sorted(found[q], key=lambda x: -x[0])[:self.k]
        for key in excluded[q]:
          if key in column:
            positive_sims[q][key] = float(vectors[q] @ matrix[column[key]])
    for rows, neighbours, sims in zip(groups, found, positive_sims):
      candidates = [mining.Candidate(text, title, rank, score)
                    for rank, (score, text, title) in enumerate(neighbours)]
      yield rows, candidates, [sims.get(text_identity(r["positive"]), 0.0) for r in rows]


class SelectNegatives(_Counted):
  """(rows, candidates, positive sims) batches -> mined rows (window, or LLM scores + RRF)."""

  def __init__(self, config: mining.MiningConfig, provenance: dict, llm_config=None):
    self.config, self.provenance, self.llm_config = config, provenance, llm_config

  def setup(self):
    from gembed.llmdata.client import LLMClient
    self.client = LLMClient(self.llm_config, progress=False) if self.llm_config else None

  def process(self, batch):
    config = self.config
    items = [(row, candidates, sim) for rows, candidates, sims in batch
             for row, sim in zip(rows, sims)]
    counts = {"rows": len(items), "rows_with_negatives": 0, "negatives": 0,
              "short_of_negatives": 0, "llm_failures": 0, "relabelled": 0}
    out = []
    if config.method == "window":
      for row, candidates, sim in items:
        negatives, details = mining.window_negatives(candidates, sim, config)
        out.append(mining.mined_row(row, negatives, dict(self.provenance, **details)))
    else:
      chosen = [mining.llm_candidates(row, candidates, config) for row, candidates, _ in items]
      results = self.client.map([r for (row, *_), cands in zip(items, chosen)
                                 for r in mining.llm_requests(row["query"], cands)])
      offset = 0
      for (row, *_), cands in zip(items, chosen):
        negatives, new_positive, details, errors = mining.llm_negatives(
            row, cands, results[offset:offset + 2 * len(cands)], config)
        offset += 2 * len(cands)
        counts["llm_failures"] += len(errors)
        counts["relabelled"] += new_positive is not None
        out.append(mining.mined_row(row, negatives, dict(self.provenance, **details), new_positive))
    for row in out:
      mining.count_row(counts, row, config.num_negatives)
    self.count(counts)
    yield from out


class LLMBatchStep(_Counted):
  """Runs a batch function (filter_rows, synth_retrieval) on each batch with one client/worker."""

  def __init__(self, fn, llm_config, **kwargs):
    self.fn, self.llm_config, self.kwargs = fn, llm_config, kwargs

  def setup(self):
    from gembed.llmdata.client import LLMClient
    self.client = LLMClient(self.llm_config, progress=False)

  def process(self, batch):
    out, counts = self.fn(batch, self.client, **self.kwargs)
    self.count(counts)
    yield from out


def _write(pcoll, output: str, num_shards: int):
  lines = pcoll | "to json" >> beam.Map(lambda row: json.dumps(row, ensure_ascii=False))
  if num_shards == 1:
    return lines | "write" >> beam.io.WriteToText(output, shard_name_template="", num_shards=1)
  prefix = output[:-len(".jsonl")] if output.endswith(".jsonl") else output
  return lines | "write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl",
                                                 num_shards=num_shards)


def _batches(pcoll, name: str, size: int):
  return pcoll | name >> beam.BatchElements(min_batch_size=1, max_batch_size=size)


def build_mine(p, args, config: mining.MiningConfig, llm_config):
  rows = (p | "inputs" >> beam.Create(args.input) | "expand" >> beam.FlatMap(expand)
          | "read rows" >> beam.FlatMap(read_training_rows))
  docs = rows | "documents" >> beam.FlatMap(mining.row_documents)
  if args.corpus:
    extra = (p | "corpus file" >> beam.Create([args.corpus])
             | "expand corpus" >> beam.FlatMap(expand)
             | "read corpus" >> beam.FlatMap(read_passages)
             | "priority" >> beam.MapTuple(lambda text, title: (1, text, title)))
    docs = (docs, extra) | "all documents" >> beam.Flatten()
  # exact duplicates become one entry, chosen as mine.Corpus.add chooses
  unique = (docs | "key documents" >> beam.Map(lambda d: (text_identity(d[1]), d))
            | "dedupe" >> beam.CombinePerKey(min)
            | "drop priority" >> beam.MapTuple(lambda key, d: (key, (d[1], d[2]))))
  embedded = (_batches(unique, "document batches", args.batch_size)
              | "embed documents" >> beam.ParDo(EmbedDocuments(args.model, args.batch_size,
                                                               args.max_length)))
  blocks = embedded | "corpus blocks" >> beam.BatchElements(min_batch_size=args.block_size,
                                                            max_batch_size=args.block_size)
  groups = (rows | "key queries" >> beam.Map(lambda r: (text_identity(r["query"]), r))
            | "group queries" >> beam.GroupByKey()
            | "as lists" >> beam.MapTuple(lambda key, rs: (key, list(rs))))
  k = max(config.top_k, config.rank_window[1])
  searched = (_batches(groups, "query batches", args.batch_size)
              | "search" >> beam.ParDo(SearchQueries(args.model, args.batch_size, args.max_length,
                                                     k, args.task), beam.pvalue.AsIter(blocks)))
  provenance = {"model": args.model, "method": config.method}
  if llm_config is not None:
    from gembed.llmdata import prompts
    provenance.update(prompts_sha256=prompts.prompts_hash(*prompts.MINING_PROMPTS),
                      llm_model=llm_config.model)
  mined = (_batches(searched, "selection batches", args.llm_batch)
           | "select" >> beam.ParDo(SelectNegatives(config, provenance, llm_config)))
  return _write(mined, args.output, args.num_shards)


def build_llm_step(p, args, fn, reader, llm_config, **kwargs):
  items = (p | "inputs" >> beam.Create(args.input) | "expand" >> beam.FlatMap(expand)
           | "read" >> beam.FlatMap(reader))
  out = (_batches(items, "batches", args.llm_batch)
         | "llm" >> beam.ParDo(LLMBatchStep(fn, llm_config, **kwargs)))
  return _write(out, args.output, args.num_shards)


def run(build, args, **kwargs) -> dict:
  """Builds and runs a pipeline; returns its counters."""
  options = PipelineOptions(["--runner", args.runner, *shlex.split(args.beam_options or "")])
  pipeline = beam.Pipeline(options=options)
  build(pipeline, args, **kwargs)
  result = pipeline.run()
  result.wait_until_finish()
  counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
  return {c.key.metric.name: c.committed for c in counters["counters"]}
