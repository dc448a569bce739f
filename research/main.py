"""Command line: run one experiment config.

    python -m research.main --config=experiments/NAME.py[:ARG] --workdir=DIR \
        [--config.KEY=VALUE ...]

`experiments/NAME.py` defines `get_config(arg=None)`; `ARG` picks a variant
(e.g. `:full`). `--config.optimizer.learning_rate=0.01` overrides one key; an
unknown key is an error that lists the valid ones. Multi-host runs pass
--coordinator_address, --num_processes and --process_id, or --distributed=true where
JAX finds them itself (TPU pod slices, SLURM). On a TPU pod slice's workers and under
`srun` with several tasks, this is detected and --distributed=true is the default.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import sys

from ml_collections import ConfigDict

USAGE = (
  "usage: python -m research.main --config=experiments/NAME.py[:ARG] --workdir=DIR "
  "[--config.KEY=VALUE ...]"
)


def load_config(spec: str) -> ConfigDict:
  """`"path/to/NAME.py[:ARG]"` -> get_config(ARG) of that file."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    known = (
      sorted(f for f in os.listdir(here) if f.endswith(".py") and not f.startswith("_"))
      if os.path.isdir(here)
      else []
    )
    raise FileNotFoundError(
      f"--config: expected the path of an experiment module; {path!r} does not exist. "
      f"Experiments: {['experiments/' + k for k in known]}."
    )
  name = "experiment_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config: {path!r} defines no get_config(arg=None).")
  return module.get_config(arg or None)


def _keys(config: ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    out += _keys(v, f"{prefix}{k}.") if isinstance(v, ConfigDict) else [prefix + k]
  return out


def override(config: ConfigDict, key: str, text: str) -> None:
  """Sets `config.key` (dotted) from the command-line text, keeping the key's type."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node.get(p) if isinstance(node, ConfigDict) else None
  if not isinstance(node, ConfigDict) or leaf not in node:
    raise ValueError(f"--config.{key}: unknown config key {key!r}; valid keys: {_keys(config)}.")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text  # A bare word is a string: --config.dataset=mnist.
  current = node[leaf]
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    value = type(current)(value)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(
      f"--config.{key}: expected a value of type {type(current).__name__} (now "
      f"{current!r}); received {text!r}."
    ) from e


def parse_args(argv: list[str]) -> tuple[ConfigDict, str, dict]:
  """argv -> (config with overrides applied, workdir, distributed options)."""
  flags, overrides = {}, []
  for arg in argv:
    if not arg.startswith("--") or "=" not in arg:
      raise ValueError(f"expected --NAME=VALUE arguments; received {arg!r}. {USAGE}")
    name, value = arg[2:].split("=", 1)
    if name.startswith("config."):
      overrides.append((name[len("config.") :], value))
    elif name in (
      "config",
      "workdir",
      "coordinator_address",
      "num_processes",
      "process_id",
      "distributed",
    ):
      flags[name] = value
    else:
      raise ValueError(f"unknown flag --{name}. {USAGE}")
  for name in ("config", "workdir"):
    if name not in flags:
      raise ValueError(f"--{name} is required. {USAGE}")
  config = load_config(flags["config"])
  for key, value in overrides:
    override(config, key, value)
  distributed = {
    k: flags[k] for k in ("coordinator_address", "num_processes", "process_id") if k in flags
  }
  choice = flags.get("distributed", "").lower()
  if choice not in ("", "1", "true", "0", "false"):
    raise ValueError(f"--distributed: expected true or false; received {flags['distributed']!r}.")
  if choice:
    # True: start jax.distributed, finding the cluster itself; False: never (not even
    # when the environment describes a cluster).
    distributed["auto"] = choice in ("1", "true")
  return config, flags["workdir"], distributed


def cluster(environ=None) -> str | None:
  """The multi-process cluster the environment describes, or None: "SLURM" (srun with
  several tasks) or "TPU pod slice" (a TPU VM worker with several hosts). There
  `jax.distributed.initialize()` finds the coordinator, the process count and this
  process's id by itself."""
  environ = os.environ if environ is None else environ
  if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return "SLURM"
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return "TPU pod slice"
  return None


def run(argv: list[str]) -> dict:
  """Parses `argv` (without the program name), trains and evaluates; returns the results."""
  config, workdir, distributed = parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel

  auto = distributed.pop("auto", None)
  if auto is None and not distributed and cluster() is not None:
    logging.getLogger(__name__).info(
      "%s detected: starting jax.distributed (pass --distributed=false to run alone)",
      cluster(),
    )
    auto = True
  if auto or distributed:
    # Cross-process collectives of the CPU backend (GPUs and TPUs bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      **{k: int(v) if k != "coordinator_address" else v for k, v in distributed.items()}
    )
  from research.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel

  if not (auto or distributed):
    return train_and_evaluate(config, workdir)
  try:
    return train_and_evaluate(config, workdir)
  finally:
    # Every process leaves together (a barrier) while the run's threads are done, not in
    # the interpreter's exit handlers: the coordinator's service stopping there with a
    # request still queued aborted a finished run (grpc's server.cc check, once in four
    # runs of tests/train/test_multihost.py).
    jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  argv = sys.argv[1:] if argv is None else argv
  # Before JAX starts its CPU client: its threads take their malloc arenas then.
  from research.train.host_memory import keep_freed_memory  # pylint: disable=import-outside-toplevel

  keep_freed_memory()
  try:
    results = run(argv)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  summary = {k: v for k, v in results.items() if k != "param_fingerprint"}
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
