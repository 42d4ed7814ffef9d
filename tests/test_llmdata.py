"""The LLM data stage against a scripted OpenAI-compatible server on loopback: client retries,
cache and failures; mining (window, random, LLM + RRF, relabel); filter; synth; kill and resume;
the API key never leaving the Authorization header."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fake_llm import FakeLLM, fields
from gembed.cli import command as cli
from gembed.data.rows import read_jsonl_rows
from gembed.llmdata import mine, prompts
from gembed.llmdata.client import EndpointError, LLMClient, LLMConfig
from gembed.textio import text_identity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-test-5f3a9c0d1e2b4a68"


def client_for(server, tmp_path, **overrides):
  config = dict(base_url=server.base_url, model="judge-1", api_key_env="GEMBED_TEST_KEY",
                cache_dir=str(tmp_path / "cache"), concurrency=4, timeout_s=0.5, max_retries=4,
                backoff_s=0.01, max_backoff_s=0.05)
  config.update(overrides)
  return LLMClient(LLMConfig(**config), progress=False)


def test_client_retries_429_5xx_timeouts_then_caches(tmp_path, monkeypatch):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  script = {0: ("status", 429), 1: ("status", 503), 2: ("sleep", 1.5)}
  with FakeLLM(lambda body, seen: script.get(seen, ("ok", '{"relevance": 2}'))) as server:
    client = client_for(server, tmp_path)
    messages = prompts.relevance_messages("q", "p")
    result = client.complete(messages, prompts.parse_relevance)
    assert result.ok and result.value == 2.0 and not result.cached
    assert len(server.requests) == 4  # 429, 503, timeout, answer
    sent = server.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "judge-1" and sent["body"]["messages"] == messages
    assert sent["body"]["temperature"] == 0.0
    assert client.stats["retries"] == 3
    again = client_for(server, tmp_path).complete(messages, prompts.parse_relevance)
    assert again.ok and again.cached and again.value == 2.0
    assert len(server.requests) == 4  # answered from the cache
    cached = open(next((tmp_path / "cache").rglob("*.json"))).read()
    assert KEY not in cached and "judge-1" in cached


def test_malformed_is_retried_then_recorded_as_failure(tmp_path, monkeypatch):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)

  def responder(body, seen):
    query = fields(body)["Query"]
    if query == "always bad":
      return ("ok", "I think it is quite relevant.")
    if query == "bad once" and seen == 0:
      return ("raw", b"<html>busy</html>")
    if query == "out of range":
      return ("ok", '{"relevance": 7}')
    if query == "echo key":  # a server that echoes the Authorization header in its error
      return ("status", 400)
    return ("ok", '```json\n{"relevance": 1}\n```')

  with FakeLLM(responder) as server:
    client = client_for(server, tmp_path)
    queries = ["always bad", "bad once", "fine", "out of range"]
    results = client.map([(prompts.relevance_messages(q, "p"), prompts.parse_relevance)
                          for q in queries])
    assert [r.ok for r in results] == [False, True, True, False]
    assert results[1].value == 1.0 and results[2].value == 1.0
    assert "malformed response" in results[0].error and "no JSON object" in results[0].error
    assert "must be a number in [0, 3]" in results[3].error
    per_query = {q: sum(fields(r["body"])["Query"] == q for r in server.requests) for q in queries}
    assert per_query == {"always bad": 3, "bad once": 2, "fine": 1, "out of range": 3}
    assert client.stats["failures"] == 2
    # failures are not cached: a rerun asks again
    client_for(server, tmp_path).complete(prompts.relevance_messages("always bad", "p"),
                                          prompts.parse_relevance)
    assert per_query["always bad"] + 3 == sum(fields(r["body"])["Query"] == "always bad"
                                              for r in server.requests)


def test_refused_key_stops_the_job_with_a_scrubbed_error(tmp_path, monkeypatch):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  with FakeLLM(lambda body, seen: ("status", 401)) as server:
    client = client_for(server, tmp_path)
    client._url = server.base_url + f"/chat/completions?key={KEY}"  # a key in the URL, as some gateways want
    with pytest.raises(EndpointError) as error:  # a refused key stops the job, not each item
      client.map([(prompts.relevance_messages(f"q{i}", "p"), prompts.parse_relevance)
                  for i in range(20)])
    assert len(server.requests) < 20  # the pending requests were cancelled
  assert "HTTP 401" in str(error.value)
  assert KEY not in str(error.value) and "***" in str(error.value)


def test_reciprocal_rank_fusion_by_hand():
  relevance = [3, 1, 2, 0]
  likelihood = [40, 90, 60, 10]
  # ranks (1-based, descending): relevance -> [1, 3, 2, 4]; likelihood -> [3, 1, 2, 4]
  fused = mine.reciprocal_rank_fusion([relevance, likelihood], tiebreak=[0, 1, 2, 3], k=60)
  expected = [1 / 61 + 1 / 63, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62, 1 / 64 + 1 / 64]
  np.testing.assert_allclose(fused, expected, rtol=0, atol=1e-15)
  # ties are broken by the tiebreak (embedding rank): equal scores -> the earlier neighbour first
  np.testing.assert_array_equal(mine.rank_positions([2, 2, 3], [0, 1, 2]), [2, 3, 1])
  # ranks: relevance [4, 1, 3, 2], likelihood [4, 3, 1, 2] -> 11 and 12 tie at 1/61 + 1/63, which
  # beats 13's 2/62 (1/x is convex); 10 is last with 2/64
  order = mine.fuse_candidates([10, 11, 12, 13], [0, 3, 1, 2], [10, 40, 90, 60], 60)
  assert [c for c, *_ in order] == [11, 12, 13, 10]
  assert [f for _, f, *_ in order] == pytest.approx([1 / 61 + 1 / 63] * 2 + [2 / 62, 2 / 64])


def test_select_window_and_random_respect_positives():
  config = mine.MiningConfig(num_negatives=2, rank_window=(1, 5), margin_ratio=0.9)
  ids = np.array([4, 5, 6, 7, 8, 9])
  scores = np.array([0.95, 0.93, 0.85, 0.80, 0.70, 0.6])
  # rank 0 is outside the window; rank 1 (0.93) is above 0.9 x 1.0: skipped as a likely positive
  assert mine.select_window(ids, scores, 1.0, config) == [2, 3]
  rng = np.random.default_rng(0)
  for _ in range(50):
    chosen = mine.random_negatives(6, [0, 2, 4], 3, rng)
    assert sorted(chosen) == [1, 3, 5]
  assert mine.random_negatives(3, [0, 1, 2], 2, rng) == []


CORPUS = [  # single-line passages: the fake server reads them back from the prompt
    "Boil the egg for six minutes for a soft yolk.",
    "Hard-boiled eggs need ten to twelve minutes in boiling water.",
    "Eggs are a source of protein and vitamin D.",
    "Chickens lay about one egg a day in summer.",
    "Poached eggs are cooked in simmering water without the shell.",
    "The Eiffel Tower was completed in 1889.",
    "Paris is the capital of France.",
    "The Louvre is the most visited museum in the world.",
]
ROWS = [
    {"query": "how long to boil an egg for a soft yolk", "positive": CORPUS[0], "task": "eggs"},
    {"query": "when was the eiffel tower built", "positive": CORPUS[5], "task": "paris"},
    {"query": "when was the eiffel tower built", "positive": "The Eiffel Tower opened in 1889.",
     "task": "paris"},  # a second positive of the same query: never a negative for either row
]
# The judge's opinion of each passage (relevance 0-3, likelihood 0-100), no ties per query.
JUDGE = {
    CORPUS[1]: (2, 60), CORPUS[2]: (1, 30), CORPUS[3]: (0, 10), CORPUS[4]: (1, 20),
    CORPUS[6]: (1, 40), CORPUS[7]: (0, 5), CORPUS[0]: (0, 1),
    "The Eiffel Tower opened in 1889.": (3, 95), CORPUS[5]: (3, 90),
}


def write_inputs(tmp_path):
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  corpus = tmp_path / "corpus.jsonl"
  texts = CORPUS + ["  boil the egg for six minutes for a   SOFT yolk. ",  # duplicate of a positive
                    "The eiffel tower was COMPLETED in 1889."]  # duplicate of a positive
  corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
  return data, corpus


def judge(body, seen):
  f = fields(body)
  passage = f["Passage"]
  relevance, likelihood = JUDGE.get(passage, (0, 0))
  if body["messages"][0]["content"] == prompts.RELEVANCE_SYSTEM:
    return ("ok", json.dumps({"relevance": relevance}))
  if body["messages"][0]["content"] == prompts.LIKELIHOOD_SYSTEM:
    return ("ok", f'Sure. {{"likelihood": {likelihood}}}')
  raise AssertionError("unexpected prompt")


def test_mine_with_llm_fuses_ranks_and_never_picks_positives(tmp_path, monkeypatch, minilm_dir, capsys):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  data, corpus = write_inputs(tmp_path)
  out = tmp_path / "mined.jsonl"
  with FakeLLM(judge) as server:
    code = cli.main(["mine", "--input", str(data), "--corpus", str(corpus), "--output", str(out),
                     "--model", minilm_dir, "--method", "llm", "--num-negatives", "2",
                     "--top-k", "4", "--rank-window", "0", "4", "--llm-base-url", server.base_url,
                     "--llm-model", "judge-1", "--llm-api-key-env", "GEMBED_TEST_KEY",
                     "--llm-concurrency", "3", "--quiet"])
    assert code == 0
    requests = list(server.requests)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == 3
  for row in rows:
    positives = {text_identity(r["positive"]) for r in ROWS if r["query"] == row["query"]}
    assert len(row["negatives"]) == 2
    for negative in row["negatives"]:
      assert text_identity(negative) not in positives
    assert row["mined"]["method"] == "llm" and row["mined"]["llm_model"] == "judge-1"
    assert row["mined"]["prompts_sha256"] == prompts.prompts_hash(*prompts.MINING_PROMPTS)
  # 4 candidates per query, each judged under both prompts: the lowest fused two are negatives
  egg = rows[0]
  scored = [(s["rank"], s["relevance"], s["likelihood"], s["rrf"]) for s in egg["mined"]["scores"]]
  for _, relevance, likelihood, rrf in scored:
    assert (relevance, likelihood) in JUDGE.values()
  # the egg query's candidates are the four other egg passages; by the judge, relevance ranks them
  # CORPUS[1] (2) > [2] = [4] (1, tie broken by embedding rank) > [3] (0); likelihood ranks
  # [1] (60) > [2] (30) > [4] (20) > [3] (10). So [3] is last in both: 2 / (60 + 4).
  assert egg["negatives"][0] == CORPUS[3]
  assert scored[0][3] == pytest.approx(2 / 64)
  assert egg["negatives"][1] in (CORPUS[2], CORPUS[4])
  # requests: two prompts per (query, candidate), each exactly once; the key only in the header
  assert len(requests) == 2 * 4 * 2  # two distinct queries x four candidates x two prompts
  assert len({r["key"] for r in requests}) == len(requests)
  assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in requests)
  for path in tmp_path.rglob("*"):
    if path.is_file() and path.suffix in (".jsonl", ".json"):
      assert KEY not in path.read_text(errors="replace"), path
  captured = capsys.readouterr()
  assert KEY not in captured.out + captured.err
  summary = json.loads((tmp_path / "mined.jsonl.summary.json").read_text())
  assert summary["counts"]["negatives"] == 6 and summary["llm"]["stats"]["requests"] == 16
  # the output is what the training sources read
  parsed = read_jsonl_rows([str(out)], num_negatives=2)
  assert parsed.negative_valid.all()


def test_mine_relabels_positive_with_top_fused_neighbour(tmp_path, monkeypatch, minilm_dir):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  data, corpus = write_inputs(tmp_path)
  rows = [{"query": "when was the eiffel tower built", "positive": CORPUS[6], "task": "paris"}]
  data.write_text(json.dumps(rows[0]) + "\n")
  out = tmp_path / "relabelled.jsonl"
  with FakeLLM(judge) as server:
    assert cli.main(["mine", "--input", str(data), "--corpus", str(corpus), "--output", str(out),
                     "--model", minilm_dir, "--method", "llm", "--relabel-positive",
                     "--top-k", "3", "--rank-window", "0", "3", "--llm-base-url", server.base_url,
                     "--llm-model", "judge-1", "--llm-api-key-env", "GEMBED_TEST_KEY",
                     "--quiet"]) == 0
  row = json.loads(out.read_text())
  # the paraphrase "COMPLETED in 1889" (3, 90) outranks the old positive "Paris is..." (1, 40)
  assert text_identity(row["positive"]) == text_identity(CORPUS[5])
  assert row["mined"]["relabelled_from"] == CORPUS[6]
  assert CORPUS[6] not in row["negatives"] and text_identity(CORPUS[5]) not in map(
      text_identity, row["negatives"])


def test_mine_window_and_random_without_llm(tmp_path, minilm_dir):
  data, corpus = write_inputs(tmp_path)
  for method in ("window", "random"):
    out = tmp_path / f"{method}.jsonl"
    assert cli.main(["mine", "--input", str(data), "--corpus", str(corpus), "--output", str(out),
                     "--model", minilm_dir, "--method", method, "--num-negatives", "3",
                     "--margin-ratio", "0.99", "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
      positives = {text_identity(r["positive"]) for r in ROWS if r["query"] == row["query"]}
      assert row["negatives"] and not positives & set(map(text_identity, row["negatives"]))
      assert text_identity(row["query"]) not in map(text_identity, row["negatives"])
      if method == "window":
        sims = [s["similarity"] for s in row["mined"]["scores"]]
        assert sims == sorted(sims, reverse=True)
        assert max(sims) < 0.99 * row["mined"]["positive_similarity"]
  # hard negatives of the egg query are egg passages; random ones need not be
  window = json.loads((tmp_path / "window.jsonl").read_text().splitlines()[0])
  assert all("egg" in n.lower() for n in window["negatives"])


def test_bad_rows_name_file_and_line(tmp_path, minilm_dir, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"query": "q", "positive": ""}) + "\n")
  assert cli.main(["mine", "--input", str(bad), "--output", str(tmp_path / "o.jsonl"),
                   "--method", "random", "--quiet"]) == 2
  assert f"{bad}:2: field 'positive' must be a non-empty string" in capsys.readouterr().err


def filter_judge(body, seen):
  passage = fields(body)["Passage"]
  if "newsletter" in passage:
    return ("ok", '{"relevant": false}')
  if "garbled" in passage:
    return ("ok", "relevant? yes")
  return ("ok", '{"relevant": true}')


FILTER_ROWS = [{"query": f"question {i}", "positive": text} for i, text in enumerate(
    ["an answer", "subscribe to our newsletter", "another answer", "garbled thing", "third answer",
     "newsletter again", "fourth answer", "fifth answer"])]


def run_filter(tmp_path, server, out, extra=(), **popen):
  env = dict(os.environ, GEMBED_TEST_KEY=KEY, PYTHONPATH=ROOT)
  return subprocess.Popen(
      [sys.executable, "-m", "gembed.cli", "filter", "--input", str(tmp_path / "pairs.jsonl"),
       "--output", str(out), "--llm-base-url", server.base_url, "--llm-model", "judge-1",
       "--llm-api-key-env", "GEMBED_TEST_KEY", "--llm-concurrency", "1", "--llm-timeout", "30",
       "--quiet", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_filter_killed_run_resumes_from_cache(tmp_path):
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FILTER_ROWS))
  out = tmp_path / "filtered.jsonl"
  cache = tmp_path / "filtered.jsonl.llm-cache"
  answered_first = 3

  def stalls_after_three(body, seen):  # answers three pairs, then hangs: the run is killed
    with_answers = len(first.answered_keys)
    if with_answers >= answered_first:
      return ("sleep", 60)
    return filter_judge(body, seen)

  with FakeLLM(stalls_after_three) as first:
    proc = run_filter(tmp_path, first, out)
    deadline = time.time() + 120
    while (len(list(cache.rglob("*.json"))) if cache.exists() else 0) < answered_first:
      assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    log_first = proc.stdout.read().decode()
    proc.wait()
  assert not out.exists()  # nothing half-written
  first_keys = set(first.answered_keys)
  assert len(first_keys) == answered_first

  with FakeLLM(filter_judge) as second:
    proc = run_filter(tmp_path, second, out, ["--flag"])
    log_second = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, log_second
  second_keys = [r["key"] for r in second.requests]
  assert not first_keys & set(second_keys), "answered requests were sent again"
  # garbled: 1 ask + 2 malformed retries; the other four pending pairs once each
  assert len(second_keys) == (len(FILTER_ROWS) - answered_first - 1) + 3
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == len(FILTER_ROWS)  # --flag keeps every row
  verdicts = [r["llm_filter"]["relevant"] for r in rows]
  assert verdicts == [True, False, True, None, True, False, True, True]
  summary = json.loads((tmp_path / "filtered.jsonl.summary.json").read_text())
  assert {k: summary["counts"][k] for k in ("relevant", "irrelevant", "failed")} == {
      "relevant": 5, "irrelevant": 2, "failed": 1}

  # dropping (the default) on a third run: entirely from the cache except the failed pair
  with FakeLLM(filter_judge) as third:
    proc = run_filter(tmp_path, third, tmp_path / "dropped.jsonl",
                      ["--llm-cache", str(cache)])
    log_third = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, log_third
    assert len(third.requests) == 3  # only the garbled pair is asked again
  kept = [json.loads(line)["positive"] for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
  assert "subscribe to our newsletter" not in kept and "garbled thing" in kept and len(kept) == 6
  assert '"irrelevant": 2' in log_third
  for text in (log_first, log_second, log_third):
    assert KEY not in text
  for path in tmp_path.rglob("*"):
    if path.is_file():
      assert KEY not in path.read_text(errors="replace"), path


def synth_llm(body, seen):
  system = body["messages"][0]["content"]
  user = body["messages"][-1]["content"]
  if system == prompts.SYNTH_QUERY_SYSTEM:
    passage = fields(body)["Passage"]
    if "broken" in passage:
      return ("ok", '{"task": "x"}')  # no query: malformed every time
    return ("ok", json.dumps({"task": "Given a question, retrieve the answer",
                              "query": f"q{body['seed']} about {passage.split()[0]}"}))
  if system.startswith("You write realistic"):
    label = "positive" if '"positive"' in system else "negative"
    return ("ok", json.dumps({"texts": [f"{label} text {body['seed']}-{i}" for i in range(3)]
                              + (["duplicate text"] if label == "positive" else [])}))
  if system == prompts.RATER_SYSTEM:
    unrealistic = "q1 about" in user or "text 0-2" in user
    return ("ok", json.dumps({"realistic": not unrealistic, "correct": True}))
  raise AssertionError(system)


def test_synth_retrieval_and_classification(tmp_path, monkeypatch):
  monkeypatch.setenv("GEMBED_TEST_KEY", KEY)
  passages = tmp_path / "passages.txt"
  passages.write_text("Alpha passage text.\nBeta passage text.\nbroken passage\n")
  with FakeLLM(synth_llm) as server:
    common = ["--llm-base-url", server.base_url, "--llm-model", "gen-1",
              "--llm-api-key-env", "GEMBED_TEST_KEY", "--quiet"]
    assert cli.main(["synth", "retrieval", "--passages", str(passages), "--queries-per-passage",
                     "2", "--output", str(tmp_path / "synth.jsonl"), *common]) == 0
    assert cli.main(["synth", "classification", "--description", "sentiment of product reviews",
                     "--labels", "positive", "negative", "--per-label", "5", "--batch-size", "3",
                     "--output", str(tmp_path / "cls.jsonl"), *common]) == 0
    generation = [r["body"] for r in server.requests
                  if r["body"]["messages"][0]["content"] == prompts.SYNTH_QUERY_SYSTEM]
  assert {b["seed"] for b in generation} == {0, 1} and all(b["temperature"] == 1.0 for b in generation)
  rows = [json.loads(line) for line in (tmp_path / "synth.jsonl").read_text().splitlines()]
  # 2 passages x 2 queries; the rater drops the q1 ones; the broken passage fails generation
  assert [r["query"] for r in rows] == ["q0 about Alpha", "q0 about Beta"]
  assert rows[0]["positive"] == "Alpha passage text." and rows[0]["task"] == "synthetic"
  assert read_jsonl_rows([str(tmp_path / "synth.jsonl")], num_negatives=0).query.size == 2
  counts = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())["counts"]
  assert counts["generation_failed"] == 2 and counts["rated_unrealistic"] == 2
  cls = [json.loads(line) for line in (tmp_path / "cls.jsonl").read_text().splitlines()]
  by_label = {label: [r["text"] for r in cls if r["label"] == label] for label in ("positive", "negative")}
  # two batches of three per label (+ one duplicate for positive); the rater drops "text 0-2"
  assert by_label["negative"] == ["negative text 0-0", "negative text 0-1", "negative text 1-0",
                                  "negative text 1-1", "negative text 1-2"]
  assert len(by_label["positive"]) == 5 and by_label["positive"].count("duplicate text") == 1


def test_window_mining_matches_sentence_transformers(minilm_dir, tmp_path):
  """The no-LLM method against the peer's mine_hard_negatives on real pairs: same model, length,
  candidate range and relative margin -> the same negative for (nearly) every row."""
  from datasets import Dataset
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.util import mine_hard_negatives

  from conftest import shared_data
  from gembed.encode import TextEncoder
  from gembed.formats.modeldir import load_model

  rows = [json.loads(line) for line in
          shared_data("training/quora-pairs.jsonl").read_text().splitlines()[:200]]
  info, params = load_model(minilm_dir)
  encoder = TextEncoder(info, params, max_length=64)
  corpus, positive_ids = mine.build_corpus(rows)
  config = mine.MiningConfig(num_negatives=1, top_k=10, rank_window=(0, 10), margin_ratio=0.95)
  ours, _ = mine.mine(rows, corpus, positive_ids, encoder=encoder, config=config,
                      model_name="minilm", work_dir=str(tmp_path), progress=False)
  peer = SentenceTransformer(minilm_dir, device="cpu")
  peer.max_seq_length = 64
  theirs = mine_hard_negatives(
      Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}),
      peer, range_max=10, relative_margin=0.05, num_negatives=1, sampling_strategy="top",
      verbose=False)
  peer_negative = {(r["anchor"], r["positive"]): r["negative"] for r in theirs}
  pairs = [(r["negatives"][0], peer_negative.get((r["query"], r["positive"]))) for r in ours
           if r["negatives"]]
  assert len(pairs) >= 190 and len(peer_negative) >= 190
  same = sum(a == b for a, b in pairs if b is not None) / sum(b is not None for _, b in pairs)
  assert same >= 0.97, same  # float ties and near-threshold margins may differ on a few rows


def test_embedding_resumes_after_a_crash(tmp_path, minilm):
  from gembed.encode import TextEncoder
  from gembed.llmdata.neighbours import embed_to_file

  texts = [f"sentence number {i} about topic {i % 7}" for i in range(23)]
  encoder = TextEncoder(*minilm, batch_size=8, max_length=32)
  expected = encoder.encode_formatted(texts)
  calls = []
  real = encoder.encode_formatted

  def crashing(chunk, **kwargs):
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    calls.append(len(chunk))
    return real(chunk, **kwargs)

  encoder.encode_formatted = crashing
  path = str(tmp_path / "emb.npy")
  with pytest.raises(KeyboardInterrupt):
    embed_to_file(encoder, texts, path, chunk_size=5, progress=False)
  encoder.encode_formatted = lambda chunk, **kwargs: calls.append(len(chunk)) or real(chunk, **kwargs)
  result = embed_to_file(encoder, texts, path, chunk_size=5, progress=False)
  assert calls == [5, 5, 5, 5, 3]  # two chunks before the crash, the other three after
  np.testing.assert_allclose(result, expected, atol=1e-6)
  # other texts (or another model) never reuse the file
  calls.clear()
  embed_to_file(encoder, texts[:-1], path, chunk_size=5, progress=False)
  assert calls == [5, 5, 5, 5, 2]
