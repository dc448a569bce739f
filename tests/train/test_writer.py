"""MetricWriter: metrics.jsonl and TensorBoard events, without importing torch."""

import subprocess
import sys
import textwrap

from research.train.writer import MetricWriter, read_metrics
from tests.conftest import subprocess_env


def test_lines_and_events_and_a_resume_drops_later_steps(tmp_path):
  w = MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    w.write(step, "train", {"loss": 1.0 / step})
  w.close()
  w = MetricWriter(str(tmp_path), resume_step=2)  # steps after the checkpoint go
  w.write(3, "train", {"loss": 0.25})
  w.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
    (1, 1.0),
    (2, 0.5),
    (3, 0.25),
  ]
  assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())


def test_the_writer_does_not_import_torch_and_torch_imports_after_it(tmp_path):
  script = textwrap.dedent(
    f"""
    import sys
    from research.train.writer import MetricWriter
    w = MetricWriter({str(tmp_path)!r})
    w.write(1, "train", {{"loss": 1.0}})
    w.close()
    assert "torch" not in sys.modules, "tensorboardX imported torch"
    try:
      import torch
    except ImportError:
      print("no torch")
    else:
      print(torch.ones(2).sum().item())
    """
  )
  out = subprocess.run(
    [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-1] in ("2.0", "torch")
