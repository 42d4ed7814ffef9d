"""`gembed encode`: contracts.md behaviour and clear input errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gembed.cli.command import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_encode_txt_dim_and_no_normalize(tmp_path, minilm):
  texts = ["first line", "a second, longer line of text", "third"]
  src = tmp_path / "in.txt"
  src.write_text("\n".join(texts) + "\n")
  out = tmp_path / "out.npy"
  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(src), "--output", str(out),
               "--quiet"]) == 0
  full = np.load(out)
  assert full.shape == (3, 384) and full.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)

  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(src), "--output", str(out),
               "--dim", "96", "--quiet"]) == 0
  cut = np.load(out)
  expected = full[:, :96] / np.linalg.norm(full[:, :96], axis=1, keepdims=True)
  np.testing.assert_allclose(cut, expected, atol=1e-5)

  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(src), "--output", str(out),
               "--no-normalize", "--quiet"]) == 0
  raw = np.load(out)
  assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
  np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), full, atol=1e-5)


def test_encode_jsonl_keeps_order_across_batches(tmp_path):
  texts = [f"text number {i} " + "word " * (i % 37) for i in range(70)]
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  out = tmp_path / "out.npy"
  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(src), "--output", str(out),
               "--batch-size", "16", "--quiet"]) == 0
  batched = np.load(out)
  single = tmp_path / "one.txt"
  single.write_text(texts[41] + "\n")
  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(single), "--output",
               str(out), "--quiet"]) == 0
  np.testing.assert_allclose(batched[41], np.load(out)[0], atol=1e-5)


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\n{"text": 5}\n', "in.jsonl:2: field 'text' must be a string"),
    (b'{"text": "ok"}\n{"text": "  "}\n', "in.jsonl:2: field 'text' is empty"),
    (b'{"text": "ok"}\n{"txt": "x"}\n', "in.jsonl:2: field 'text' must be a string, got nothing"),
    (b'{"text": "ok"}\n{"text": \n', "in.jsonl:2: invalid JSON"),
    (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', "in.jsonl:2: invalid UTF-8"),
    (b"", "in.jsonl: no texts to encode"),
])
def test_bad_jsonl_input_names_the_line(tmp_path, capsys, content, message):
  src = tmp_path / "in.jsonl"
  src.write_bytes(content)
  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(src),
               "--output", str(tmp_path / "o.npy")]) == 2
  assert message in capsys.readouterr().err


def test_empty_line_in_txt_is_an_error(tmp_path, capsys):
  src = tmp_path / "in.txt"
  src.write_text("one\n\nthree\n")
  assert main(["encode", "--model", "all-MiniLM-L6-v2", "--input", str(src),
               "--output", str(tmp_path / "o.npy")]) == 2
  assert "in.txt:2: empty line" in capsys.readouterr().err


def test_gembed_train_passes_flags_to_the_trainer(capsys):
  import os
  config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "finetune.py:tiny")
  assert main(["train", "--config", config, "--workdir", "/tmp/unused",
               "--config.optim.learning_rat=1"]) == 2
  assert "learning_rat" in capsys.readouterr().err


def test_encode_prints_only_its_own_line(tmp_path):
  """At default verbosity, in a fresh shell (no TF_CPP_MIN_LOG_LEVEL), stderr holds the
  command's own result line and no start-up line of TensorFlow, XLA, CUDA or absl."""
  src = tmp_path / "in.txt"
  src.write_text("one line\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = ROOT
  out = subprocess.run([sys.executable, "-m", "gembed.cli", "encode", "--model", "all-MiniLM-L6-v2",
                        "--input", str(src), "--output", str(tmp_path / "o.npy")],
                       capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stderr.splitlines() == [f"wrote 1 x 384 float32 embeddings to {tmp_path / 'o.npy'}"]


def test_shell_commands_restart_with_tcmalloc_when_asked():
  """With GEMBED_TCMALLOC=1 startup.preload_tcmalloc re-executes the process once with tcmalloc
  preloaded (same arguments); by default, and with 0, the system's malloc stays."""
  import ctypes.util

  from gembed.cli import startup
  if not any(map(ctypes.util.find_library, startup.TCMALLOC_LIBRARIES)):
    pytest.skip("no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
  code = ("import sys; from gembed.cli import startup; startup.preload_tcmalloc(); "
          "print('tcmalloc' in open('/proc/self/maps').read(), sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GEMBED_TCMALLOC")}
  env["PYTHONPATH"] = ROOT
  for switch, loaded in (("1", True), ("0", False), (None, False)):
    out = subprocess.run([sys.executable, "-c", code, "an argument"], capture_output=True,
                         text=True, timeout=60,
                         env=dict(env, **({"GEMBED_TCMALLOC": switch} if switch else {})))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{loaded} ['an argument']"
