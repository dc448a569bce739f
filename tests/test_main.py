"""The command line: configs, overrides and the errors a user meets first."""

import json
import subprocess
import sys

import pytest

from research import main
from tests.conftest import ROOT, subprocess_env

CONFIG = "--config=experiments/lenet5_mnist.py"


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def test_overrides_keep_types_and_reach_nested_keys():
  config, workdir, _ = main.parse_args(
    [
      CONFIG,
      "--workdir=/tmp/x",
      "--config.total_steps=7",
      "--config.optimizer.name=adam",
      "--config.optimizer.learning_rate=1",
      "--config.input.value_range=(0, 1)",
    ]
  )
  assert workdir == "/tmp/x"
  assert config.total_steps == 7 and config.optimizer.name == "adam"
  assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
  assert config.input.value_range == (0, 1)


def test_full_variant_is_the_paper_setting_on_tfds_mnist():
  config, _, _ = main.parse_args([CONFIG + ":full", "--workdir=/tmp/x"])
  assert config.dataset == "mnist" and config.total_steps == 20 * 60000 // 128


@pytest.mark.parametrize(
  "argv, error, message",
  [
    (
      ["--config.optimiser.name=adam"],
      ValueError,
      r"unknown config key 'optimiser.name'; valid keys: \[.*'optimizer.name'",
    ),
    (["--config.total_step=5"], ValueError, r"unknown config key 'total_step'.*'total_steps'"),
    (["--config.total_steps=many"], ValueError, r"expected a value of type int.*'many'"),
    (["--learning_rate=0.1"], ValueError, "unknown flag --learning_rate"),
  ],
)
def test_bad_command_lines(argv, error, message):
  with pytest.raises(error, match=message):
    main.parse_args([CONFIG, "--workdir=/tmp/x", *argv])


def test_missing_config_file_lists_the_experiments():
  with pytest.raises(
    FileNotFoundError,
    match=r"'experiments/lenet6.py' does not exist.*"
    r"experiments/lenet5_mnist.py",
  ):
    main.parse_args(["--config=experiments/lenet6.py", "--workdir=/tmp/x"])


def test_unknown_variant_is_refused():
  with pytest.raises(
    ValueError, match=r"expected variant one of \[None, 'full'\]; received 'tiny'"
  ):
    main.parse_args([CONFIG + ":tiny", "--workdir=/tmp/x"])


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.model=lenet.LeNet6", r"unknown model 'lenet.LeNet6'; lenet has \['lenet.LeNet5'\]"),
    ("--config.model=resnet9.ResNet9", r"FAMILY one of \[.*'lenet'"),
    ("--config.dataset=mnist6k", r"unknown data set 'mnist6k'; expected one of \[.*'mnist5k'"),
    ("--config.num_classes=5", r"class indices in \[0, 5\).*received label [5-9]"),
    ("--config.parallelism=shard", r"parallelism: expected one of"),
    ("--config.batch_size=0", r"batch_size: expected a positive integer; received 0"),
    ("--config.log_every_steps=0", r"log_every_steps: expected a positive integer; received 0"),
    (
      "--config.input_gradient_penalty=-0.5",
      r"input_gradient_penalty: expected a finite number >= 0; received -0.5",
    ),
  ],
)
def test_bad_configs_fail_with_a_clear_error(override, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    main.run([CONFIG, f"--workdir={tmp_path}", "--config.total_steps=2", override])


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match=r"workdir: expected a writable directory"):
    main.run([CONFIG, f"--workdir={blocker}/run", "--config.total_steps=2"])


def test_experiment_module_runs_the_same_as_research_main(tmp_path):
  """`python -m experiments.lenet5_mnist` is `python -m research.main --config=...`."""
  args = [
    "--config.total_steps=20",
    "--config.checkpoint_every_steps=20",
    "--config.eval_every_steps=0",
    "--config.log_every_steps=10",
  ]
  env = subprocess_env(JAX_PLATFORMS="cpu")
  # The three processes are independent: started together, their imports overlap.
  runs = [
    subprocess.Popen(
      [sys.executable, *cmd, f"--workdir={tmp_path / name}", *args],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, cmd in (
      ("a", ["-m", "experiments.lenet5_mnist"]),
      ("b", ["-m", "research.main", CONFIG]),
      ("bad", ["-m", "research.main", CONFIG, "--config.modle=x"]),
    )
  ]
  outputs = [run.communicate() for run in runs]
  for run, (_, stderr) in zip(runs[:2], outputs):
    assert run.returncode == 0, stderr
  a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
  assert a["param_fingerprint"] == b["param_fingerprint"]
  bad_stderr = outputs[2][1]
  assert runs[2].returncode == 2 and "error: --config.modle: unknown config key" in bad_stderr
