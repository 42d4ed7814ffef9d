"""The training benchmark runs without TensorFlow or SeqIO (an accelerator image with JAX only)."""

import json
import subprocess
import sys

BLOCK_TF = ("import sys; sys.modules['tensorflow'] = None; sys.modules['seqio'] = None; "
            "from gembed.cli.command import main; sys.exit(main(sys.argv[1:]))")


def test_train_benchmark_without_tensorflow(tmp_path):
  """8 simulated devices (the test environment's): GradCache chunks of 8 rows, one per device."""
  triples = tmp_path / "triples.jsonl"
  rows = [{"query": f"question number {i} about topic {i % 7}",
           "positive": f"an answer that talks about topic {i % 7} and item {i}",
           "negative": f"an unrelated sentence {i} on another subject"} for i in range(64)]
  triples.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = subprocess.run(
      [sys.executable, "-c", BLOCK_TF, "bench", "train", "--no-peer", "--triples", str(triples),
       "--batch-size", "16", "--steps", "3", "--max-length", "32", "--grad-cache-chunk", "8"],
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert result["steps_timed"] == 3 and result["gembed_examples_per_s"] > 0
  assert result["gembed_mfu"] > 0 and result["grad_cache_chunk"] == 8


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
