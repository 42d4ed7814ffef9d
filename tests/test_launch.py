"""launch/tpu_run.sh --dry-run prints the exact gcloud commands."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_run.sh")


def _run(*args, env=None):
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                        env=dict(os.environ, **(env or {})))


def test_dry_run_prints_create_copy_and_train():
  out = _run("--name", "t1", "--zone", "us-central2-b", "--type", "v4-32", "--config",
             "configs/prefinetune.py", "--workdir", "gs://b/runs/p", "--data-dir", "gs://b/data",
             "--spot", "--dry-run", "--", "--config.train.steps=10")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create t1 --zone us-central2-b "
                             "--accelerator-type v4-32 --version tpu-ubuntu2204-base --spot")
  assert lines[1].startswith("git -C ") and "archive" in lines[1]
  assert "tpu-vm scp" in lines[2] and "--worker=all" in lines[2]
  assert "tpu-vm ssh t1 --worker=all" in lines[3]
  for part in ("gembed.main", "configs/prefinetune.py", "gs://b/runs/p",
               "--config.train.distributed=True", "--config.data.dir=gs://b/data",
               "--config.train.steps=10", ".[tpu]"):
    assert part in lines[3].replace("\\", ""), part


def test_queued_resource_and_env_variables():
  out = _run("--config", "c.py", "--workdir", "gs://b/w", "--queued", "--dry-run",
             env={"TPU_NAME": "q1", "TPU_ZONE": "europe-west4-a", "TPU_PROJECT": "proj"})
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("gcloud compute tpus queued-resources create q1 --node-id q1 "
                               "--zone europe-west4-a")
  assert "--project proj" in out.stdout


def test_missing_settings_are_errors():
  out = _run("--name", "t", "--zone", "z", "--config", "c.py", "--workdir", "/local", "--dry-run")
  assert out.returncode == 2 and "gs://" in out.stderr
  out = _run("--zone", "z", "--dry-run")
  assert out.returncode == 2 and "--name is required" in out.stderr
