"""A TFDS builder over local JSONL training files, so users can register their own datasets.

    from gembed.data.tfds_jsonl import JsonlTriples, JsonlConfig
    builder = JsonlTriples(config=JsonlConfig(name="medquad", files=["/data/medquad.jsonl"]),
                           data_dir="/data/tfds")
    builder.download_and_prepare()
    # then in a config (builder.data_dir is the prepared dataset's directory):
    common.task("medquad", source="tfds", tfds_name=builder.data_dir)

Rows are validated with the same reader as the JSONL source (errors name file and line).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from gembed.data.rows import read_jsonl_rows

MAX_NEGATIVES = 16


@dataclasses.dataclass
class JsonlConfig(tfds.core.BuilderConfig):
  files: tuple[str, ...] = ()


class JsonlTriples(tfds.core.GeneratorBasedBuilder):
  """(query, positive, negatives) rows read from local JSONL files."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []  # users pass JsonlConfig(name=..., files=...) to the constructor

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="gembed training rows from local JSONL files",
        features=tfds.features.FeaturesDict({
            "query": text, "positive": text, "title": text, "query_id": text,
            "positive_id": text, "negatives": tfds.features.Sequence(text)}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    return {"train": self._generate_examples(list(self.builder_config.files))}

  def _generate_examples(self, files):
    rows = read_jsonl_rows(files, num_negatives=MAX_NEGATIVES)
    for i in range(len(rows)):
      yield i, {"query": rows.query[i], "positive": rows.positive[i], "title": rows.title[i],
                "query_id": rows.query_id[i], "positive_id": rows.positive_id[i],
                "negatives": [n for n, ok in zip(rows.negatives[i], rows.negative_valid[i]) if ok]}
