"""Every `gembed bench` command runs on a tiny budget, with its sentence-transformers side where it
has one (so that a peer-library change cannot break a benchmark unseen); the training benchmark
also runs without TensorFlow or SeqIO (an accelerator image with JAX only). `bench quality` is
run by tests/test_recipe.py."""

import json
import subprocess
import sys

BLOCK_TF = ("import sys; sys.modules['tensorflow'] = None; sys.modules['seqio'] = None; "
            "from gembed.cli.command import main; sys.exit(main(sys.argv[1:]))")


def test_train_benchmark_without_tensorflow(tmp_path):
  """8 simulated devices (the test environment's), two length groups of 8 rows. (GradCache in
  the bench: the memory benchmark's test; with length groups: tests/test_gradcache.py.)"""
  triples = tmp_path / "triples.jsonl"
  rows = [{"query": f"question number {i} about topic {i % 7}",
           "positive": f"an answer that talks about topic {i % 7} and item {i}",
           "negative": f"an unrelated sentence {i} on another subject"} for i in range(64)]
  triples.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = subprocess.run(
      [sys.executable, "-c", BLOCK_TF, "bench", "train", "--no-peer", "--triples", str(triples),
       "--batch-size", "16", "--steps", "3", "--max-length", "32", "--length-groups", "2"],
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert result["steps_timed"] == 3 and result["gembed_examples_per_s"] > 0
  assert result["gembed_mfu"] > 0
  assert all(len(shape) == 2 for shape in result["step_shapes"])  # (query, document) per group


def test_peer_benchmark_without_torch_says_what_to_install():
  """The main install has no PyTorch: a peer benchmark says so in one line instead of a traceback."""
  block_torch = ("import sys; sys.modules['torch'] = None; "
                 "from gembed.cli.command import main; sys.exit(main(sys.argv[1:]))")
  out = subprocess.run([sys.executable, "-c", block_torch, "bench", "encode"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [line for line in out.stderr.splitlines() if line.startswith("gembed bench")]
  assert lines == ["gembed bench encode: the sentence-transformers side needs torch: "
                   "pip install -e '.[test]'"], out.stderr[-3000:]
  assert "Traceback" not in out.stderr


def test_encode_benchmark_times_a_student_beside_its_model(tmp_path, minilm_dir):
  """--model (an HF directory: sentence-transformers times it too) and --student side by side."""
  import os

  from tiny import make_tiny_bert_dir
  model = make_tiny_bert_dir(tmp_path / "tiny", os.path.join(minilm_dir, "tokenizer.json"))
  texts = tmp_path / "texts.jsonl"
  texts.write_text("".join(json.dumps({"query": f"question {i}", "positive": f"answer {i}"}) + "\n"
                           for i in range(16)))
  out = subprocess.run(
      [sys.executable, "-m", "gembed.cli", "bench", "encode", "--texts", str(texts), "--n", "32",
       "--repeats", "1", "--batch-size", "8", "--max-length", "16", "--model", model,
       "--student", model], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert result["texts"] == 32 and result["student_speedup"] > 0
  assert result["gembed_texts_per_s"] > 0 and result["ratio"] > 0


def _triples(path, n=48):
  rows = [{"query": f"question number {i} about topic {i % 7}",
           "positive": f"an answer that talks about topic {i % 7} and item {i}",
           "negative": f"an unrelated sentence {i} on another subject"} for i in range(n)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _bench(capsys, *argv) -> dict:
  from gembed.cli.command import main
  assert main(["bench", *argv]) == 0, capsys.readouterr().err[-3000:]
  out = capsys.readouterr().out  # progress lines (bench memory), then the JSON result
  return json.loads(out[out.index("\n{") + 1 if not out.startswith("{") else 0:])


def test_train_benchmark_beside_sentence_transformers(tmp_path, minilm_dir, capsys):
  """The peer's training step on the same batches (the side that once crashed on a
  sentence-transformers API change)."""
  import os

  from tiny import make_tiny_bert_dir
  model = make_tiny_bert_dir(tmp_path / "tiny", os.path.join(minilm_dir, "tokenizer.json"))
  result = _bench(capsys, "train", "--triples", _triples(tmp_path / "t.jsonl"), "--model", model,
                  "--batch-size", "16", "--steps", "2", "--max-length", "16")
  assert result["steps_timed"] == 2
  assert result["gembed_examples_per_s"] > 0 and result["sentence_transformers_examples_per_s"] > 0
  # The peer pads each text stream to its longest; gembed to a bucket (16 = --max-length here).
  assert result["gembed_padded_tokens_per_step"] == 16 * 16 * 3
  assert 0 < result["peer_padded_tokens_per_step"] <= 16 * 16 * 3
  assert result["padded_tokens_per_s"]["ratio"] > 0


def test_mine_data_and_memory_benchmarks_on_a_tiny_budget(tmp_path, capsys):
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"query": f"how to fix problem {i} in module {i % 5}",
                                       "positive": f"problem {i} of module {i % 5} is fixed by "
                                                   f"step {i}"}) + "\n" for i in range(40)))
  mined = _bench(capsys, "mine", "--pairs", str(pairs), "--n", "40", "--top-k", "5",
                 "--repeats", "1", "--batch-size", "16", "--max-length", "16")
  assert mined["rows"] == 40 and mined["speedup"] > 0
  triples = _triples(tmp_path / "t.jsonl")
  data = _bench(capsys, "data", "--triples", triples, "--batches", "2", "--repeats", "1",
                "--batch-size", "8", "--max-length", "16")
  assert data["texts_per_s"] > 0 and data["tokenize"]["ratio"] > 0
  memory = _bench(capsys, "memory", "--triples", triples, "--batches", "16", "--chunk", "8",
                  "--run-batch", "16", "--run-steps", "1", "--batch-size", "16",
                  "--max-length", "16")
  assert set(memory["temp_gib"]) == {"plain", "grad_cache"}
  assert all(v > 0 for v in memory["examples_per_s"].values())


def test_stream_benchmark_on_a_tiny_budget(tmp_path, minilm_dir, capsys):
  import os

  from tiny import make_tiny_bert_dir
  model = make_tiny_bert_dir(tmp_path / "tiny", os.path.join(minilm_dir, "tokenizer.json"))
  result = _bench(capsys, "stream", "--rows", "40", "80", "--steps", "1", "--model", model,
                  "--tmp", str(tmp_path / "rows"))
  assert set(result["runs"]) == {"40", "80"} and result["ratio"] > 0
  assert all(run["peak_rss_mib"] > 100 for run in result["runs"].values())  # a whole trainer
