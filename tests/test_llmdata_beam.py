"""The Beam pipelines (DirectRunner) give the same rows as the in-process commands."""

import json

from fake_llm import FakeLLM
from gembed.cli import command as cli
from gembed.textio import text_identity
from test_llmdata import FILTER_ROWS, KEY, ROWS, filter_judge, judge, write_inputs


def read_rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def by_query_and_positive(rows):
  return {(r["query"], r["positive"]): r for r in rows}


def test_beam_mine_matches_in_process(tmp_path, monkeypatch, minilm_dir):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  data, corpus = write_inputs(tmp_path)
  with FakeLLM(judge) as server:
    for method in ("window", "llm"):
      outputs = {}
      for mode, extra in (("local", []), ("beam", ["--beam", "--block-size", "3", "--llm-batch", "2"])):
        out = tmp_path / f"{method}-{mode}.jsonl"
        code = cli.main(["mine", "--input", str(data), "--corpus", str(corpus), "--output",
                         str(out), "--model", minilm_dir, "--method", method, "--num-negatives", "2",
                         "--top-k", "4", "--rank-window", "0", "4", "--margin-ratio", "0.99",
                         "--llm-base-url", server.base_url, "--llm-model", "judge-1",
                         "--llm-api-key-env", "GEMBED_TEST_KEY", "--llm-cache",
                         str(tmp_path / f"cache-{mode}"), "--quiet", *extra])
        assert code == 0
        outputs[mode] = by_query_and_positive(read_rows(out))
      assert outputs["local"].keys() == outputs["beam"].keys() == {(r["query"], r["positive"]) for r in ROWS}
      for key, local in outputs["local"].items():
        beam_row = outputs["beam"][key]
        assert beam_row["negatives"] == local["negatives"], (method, key)
        assert beam_row["mined"]["scores"] == local["mined"]["scores"]
        positives = {text_identity(r["positive"]) for r in ROWS if r["query"] == key[0]}
        assert not positives & set(map(text_identity, beam_row["negatives"]))
      summary = json.loads((tmp_path / f"{method}-beam.jsonl.summary.json").read_text())
      assert summary["counts"]["rows"] == 3 and summary["counts"]["negatives"] == 6
      assert summary["runner"] == "DirectRunner"


def test_beam_filter_shares_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FILTER_ROWS))
  common = ["--input", str(tmp_path / "pairs.jsonl"), "--llm-model", "judge-1",
            "--llm-api-key-env", "GEMBED_TEST_KEY", "--llm-cache", str(tmp_path / "cache"),
            "--quiet"]
  with FakeLLM(filter_judge) as server:
    beam_common = [str(tmp_path / "pair*.jsonl") if a.endswith("pairs.jsonl") else a for a in common]
    assert cli.main(["filter", "--output", str(tmp_path / "beam.jsonl"), "--beam", "--llm-batch",
                     "3", "--llm-base-url", server.base_url, *beam_common]) == 0  # a glob input
    sent = len(server.requests)
    assert sent == len(FILTER_ROWS) + 2  # the garbled pair is asked three times
    assert cli.main(["filter", "--output", str(tmp_path / "local.jsonl"), "--llm-base-url",
                     server.base_url, *common]) == 0
    assert len(server.requests) == sent + 3  # only the failed pair again
  beam_rows = read_rows(tmp_path / "beam.jsonl")
  local_rows = read_rows(tmp_path / "local.jsonl")
  key = lambda r: r["query"]  # noqa: E731
  assert sorted(beam_rows, key=key) == sorted(local_rows, key=key)
  assert len(local_rows) == 6
  summary = json.loads((tmp_path / "beam.jsonl.summary.json").read_text())
  assert summary["counts"]["irrelevant"] == 2 and summary["counts"]["failed"] == 1
  for path in tmp_path.rglob("*"):
    if path.is_file():
      assert KEY not in path.read_text(errors="replace")


def test_beam_synth_retrieval_in_shards(tmp_path, monkeypatch):
  from test_llmdata import synth_llm
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  passages = tmp_path / "passages.txt"
  passages.write_text("Alpha passage text.\nBeta passage text.\nbroken passage\n")
  with FakeLLM(synth_llm) as server:
    assert cli.main(["synth", "retrieval", "--passages", str(passages), "--queries-per-passage",
                     "2", "--output", str(tmp_path / "synth.jsonl"), "--beam", "--num-shards", "2",
                     "--llm-batch", "1", "--llm-base-url", server.base_url, "--llm-model", "gen-1",
                     "--llm-api-key-env", "GEMBED_TEST_KEY", "--quiet"]) == 0
  shards = sorted(tmp_path.glob("synth-*-of-00002.jsonl"))
  assert len(shards) == 2
  rows = [row for shard in shards for row in read_rows(shard)]
  assert sorted(r["query"] for r in rows) == ["q0 about Alpha", "q0 about Beta"]
  counts = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())["counts"]
  assert counts["generation_failed"] == 2 and counts["rated_unrealistic"] == 2 and counts["written"] == 2
