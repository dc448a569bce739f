"""experiments/finetune_digits.py end to end in miniature: a pretraining run's workdir as
config.init, the stem frozen, a new head at 10x the learning rate; the cluster detection
of research.main."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import finetune_digits, resnet18_imagenet
from research import main
from research.train import loop


def _params(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
    restored = m.restore(m.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.device_get(restored["state"]["params"])


def _tiny(c, steps):
  c.total_steps = c.checkpoint_every_steps = steps
  c.log_every_steps, c.eval_every_steps = steps, 0
  c.model_kwargs.num_filters = 4
  return c


def test_fine_tuning_loads_the_pretrained_run_freezes_the_stem_and_renews_the_head(tmp_path):
  pre = str(tmp_path / "pre")
  loop.train_and_evaluate(_tiny(resnet18_imagenet.get_config("runlocal"), 4), pre)
  c = _tiny(finetune_digits.get_config(), 3)
  c.init.path = pre
  c.seed = 1  # another seed than the pretraining's: a fresh head differs from its head
  results = loop.train_and_evaluate(c, str(tmp_path / "fine"))
  pretrained, tuned = _params(pre), _params(str(tmp_path / "fine"))
  # The frozen stem is the pretrained stem, bit for bit; the rest trained on from it.
  for name in ("conv1", "bn1"):
    for a, b in zip(jax.tree.leaves(pretrained[name]), jax.tree.leaves(tuned[name])):
      np.testing.assert_array_equal(a, b)
  body = np.asarray(tuned["layer1.0"]["conv1"]["kernel"])
  start = np.asarray(pretrained["layer1.0"]["conv1"]["kernel"])
  assert 0 < np.abs(body - start).max() < 0.5 * np.abs(start).max()
  # The head was not loaded: another initialization than the pretrained head's.
  assert np.abs(tuned["fc"]["kernel"] - pretrained["fc"]["kernel"]).max() > 0.2
  assert 0.0 <= results["test_accuracy"] <= 1.0


def test_the_scratch_variant_has_no_init_and_no_groups():
  c = finetune_digits.get_config("scratch")
  assert not c.init.path and not c.optimizer.get("groups")
  with pytest.raises(
    ValueError, match=r"finetune_digits: expected variant one of \[None, 'scratch'\]"
  ):
    finetune_digits.get_config("runlocal")


@pytest.mark.parametrize(
  "environ, expected",
  [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "SLURM"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t1w0,t1w1,t1w2,t1w3"}, "TPU pod slice"),
  ],
)
def test_a_cluster_is_detected_from_the_environment(environ, expected):
  assert main.cluster(environ) == expected


def test_distributed_flag_takes_true_or_false_only():
  config, _, distributed = main.parse_args(
    ["--config=experiments/lenet5_mnist.py", "--workdir=/tmp/x", "--distributed=false"]
  )
  assert distributed == {"auto": False}
  with pytest.raises(ValueError, match=r"--distributed: expected true or false; received 'maybe'"):
    main.parse_args(
      ["--config=experiments/lenet5_mnist.py", "--workdir=/tmp/x", "--distributed=maybe"]
    )
