"""Training and inference images/s of each classifier in Flax and in torchvision, side by side.

    python benchmarks/throughput.py [--models resnet.ResNet50,...] [--batch 16] [--size 224]
        [--steps 5] [--warmup 2] [--conv both|onednn|lax] [--json out.json] [--profile]

Both libraries run in this one process on the same machine (CPU, or the GPU when
JAX and torch both see one), with the same weights (torchvision's, converted),
the same batch and the same step: forward, softmax cross-entropy (plus 0.3 x the
auxiliary losses for GoogLeNet), backward, SGD with momentum. Printed per model:
images/s of each, the ratio Flax / torchvision, and the fraction of the
machine's measured float32 matmul peak that the Flax step reaches (its FLOPs
from XLA's cost analysis of the lax program lowered for the CPU). Needs only jax,
flax, optax, torch, torchvision.

--conv picks the path of Flax's convolutions (research.models.layers): on the CPU
"both" (the default) times Flax twice, on oneDNN (research.ops.onednn) and on
lax, and prints the lax images/s beside; "onednn" or "lax" times one. Where the
oneDNN extension is not available (or on a GPU) both paths are lax.

--profile also traces one Flax training step with `jax.profiler` and prints
where its time goes: the compiled program's operations grouped by kind (XLA's
names without their numbers: `ynn_fusion` for the convolutions and matrix
products XLA hands to YNNPACK, `transpose_copy_fusion`, `while` for loops, ...)
in seconds summed over the runtime's worker threads, and how busy those
threads were over the step.

Run as a script, it first keeps glibc from returning freed memory to the kernel
(research.train.host_memory, as `python -m research.main` does), for both libraries:
otherwise each XLA:CPU call page-faults its buffers anew (DenseNet-121's training step at
batch 16: 738,000 faults, 3.2 s of 7.3 s in the kernel). The rows record it
("keep_freed_memory"); RESEARCH_KEEP_FREED_MEMORY=0 measures without.
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib
import json
import os
import re
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research import models  # noqa: E402
from research.convert import torchvision as tv_convert  # noqa: E402
from research.models import layers  # noqa: E402
from research.train import host_memory  # noqa: E402

# Flax variant -> torchvision constructor name and keyword arguments.
TORCHVISION = {
  "alexnet.AlexNet": ("alexnet", {}),
  "vgg.VGG16": ("vgg16", {}),
  "resnet.ResNet18": ("resnet18", {}),
  "resnet.ResNet50": ("resnet50", {}),
  "densenet.DenseNet121": ("densenet121", {}),
  "googlenet.GoogLeNet": ("googlenet", {"aux_logits": True, "init_weights": True}),
}
DEFAULT = (
  "alexnet.AlexNet,vgg.VGG16,resnet.ResNet18,resnet.ResNet50,densenet.DenseNet121,"
  "googlenet.GoogLeNet"
)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
  """--precision, the same in every benchmark that compares float32 against torch."""
  parser.add_argument(
    "--precision",
    choices=("default", "highest"),
    default="default",
    help="default: each library's own float32 default (on GPUs both may use TF32 in "
    "convolutions); highest: full float32 in both",
  )


def _timed(fn, steps: int, warmup: int) -> float:
  """Seconds per call of `fn` (which blocks until done), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def matmul_peak(n: int) -> float:
  """Measured float32 FLOP/s of an n x n x n matrix product through XLA."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  seconds = _timed(lambda: f(a).block_until_ready(), steps=5, warmup=2)
  return 2 * n**3 / seconds


def _aux_loss(out, labels):
  """GoogLeNet's auxiliary classifiers, weighted 0.3 each, when the output has them."""
  total = 0.0
  for name in ("aux1", "aux2"):
    if name in out:
      total += 0.3 * optax.softmax_cross_entropy_with_integer_labels(out[name], labels).mean()
  return total


def profile(fn, top: int = 12) -> str:
  """Where one call of `fn` (which blocks until done) spends its time, from a
  `jax.profiler` trace: XLA operations grouped by kind, in worker-thread seconds."""
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    data = jax.profiler.ProfileData.from_file(path)
  kinds, threads = collections.Counter(), set()
  for plane in data.planes:
    for line in plane.lines:
      # The compiled program's operations run on the runtime's worker threads; the events
      # that wrap them (executor, thread-pool waits) are not operations.
      if not line.name.startswith(("tf_XLAEigen", "XLAEigen")):
        continue
      for event in line.events:
        if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
          continue
        threads.add(line.name)
        kinds[re.sub(r"[._]?\d+$", "", event.name)] += event.duration_ns / 1e9
  busy = sum(kinds.values())
  if not busy:
    return "  (no operations recorded on XLA worker threads: a GPU or another runtime)"
  lines = [
    f"  {wall:.2f} s wall; operations {busy:.2f} s over {len(threads)} worker threads "
    f"({100 * busy / (wall * max(len(threads), 1)):.0f}% busy)"
  ]
  for kind, seconds in kinds.most_common(top):
    lines.append(f"  {seconds:8.3f} s {100 * seconds / busy:5.1f}%  {kind}")
  return "\n".join(lines)


def flax_timings(name, state_dict, x, labels, steps, warmup, profiled=False, conv="auto"):
  """(train s/step, infer s/step, train FLOPs/step, minor page faults per training step,
  profile) of the Flax model, its convolutions on `conv` ("auto", "onednn" or "lax":
  research.models.layers)."""
  with layers.use_conv_path(conv):
    return _flax_timings(name, state_dict, x, labels, steps, warmup, profiled)


def _flax_timings(name, state_dict, x, labels, steps, warmup, profiled):
  model = models.resolve(name)(num_classes=1000)
  variables = tv_convert.convert(state_dict, model, input_shape=(1, *x.shape[1:]))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.sgd(0.01, momentum=0.9)
  has_bn = bool(batch_stats)

  def loss_fn(params, batch_stats, x, labels):
    v = {"params": params, **({"batch_stats": batch_stats} if has_bn else {})}
    (logits, out), updates = model.apply(
      v,
      x,
      train=True,
      rngs={"dropout": jax.random.PRNGKey(0)},
      mutable=["batch_stats"] if has_bn else [],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss + _aux_loss(out, labels), updates.get("batch_stats", batch_stats)

  def step(params, batch_stats, opt_state, x, labels):
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats, x, labels
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  train_step = jax.jit(step, donate_argnums=(0, 1, 2))
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  x, labels = jnp.asarray(x), jnp.asarray(labels)
  infer_s = _timed(lambda: infer(variables, x).block_until_ready(), steps, warmup)
  # The step donates its state: give it copies, not the arrays `variables` holds.
  state = jax.tree.map(jnp.copy, [params, batch_stats, tx.init(params)])
  traced = train_step.trace(*state, x, labels)
  compiled = traced.lower().compile()
  # Counted on the lax program lowered for the CPU: oneDNN's custom calls, and a GPU's
  # library calls, are convolutions that XLA's cost analysis counts as zero.
  with layers.use_conv_path("lax"):
    lax_traced = jax.jit(step).trace(*state, x, labels)
  cost = lax_traced.lower(lowering_platforms=("cpu",)).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  def train():
    state[:] = compiled(*state, x, labels)
    jax.block_until_ready(state[0])

  for _ in range(warmup):
    train()
  # Minor page faults of the timed steps: what keep_freed_memory removes (a fresh page the
  # kernel maps and zeroes).
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  train_s = _timed(train, steps, 0)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
  return train_s, infer_s, flops, faults, (profile(train) if profiled else None)


def torch_timings(tv_name, kwargs, x, labels, steps, warmup, device):
  """(train s/step, infer s/step, state_dict) of the torchvision model."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  net = getattr(torchvision.models, tv_name)(weights=None, **kwargs)
  state_dict = {k: v.detach().clone() for k, v in net.state_dict().items()}
  net = net.to(device)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
  yt = torch.from_numpy(labels).long().to(device)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  ce = torch.nn.functional.cross_entropy
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def train():
    net.train()
    out = net(xt)
    if hasattr(out, "aux_logits1"):  # GoogLeNetOutputs in training mode
      loss = ce(out.logits, yt) + 0.3 * (ce(out.aux_logits1, yt) + ce(out.aux_logits2, yt))
    else:
      loss = ce(out, yt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()

  def infer():
    net.eval()
    with torch.inference_mode():
      net(xt)
    sync()

  return _timed(train, steps, warmup), _timed(infer, steps, warmup), state_dict


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=DEFAULT)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  parser.add_argument(
    "--conv",
    choices=("both", "onednn", "lax"),
    default="both",
    help="path of Flax's convolutions: both (oneDNN, with lax beside), onednn or lax",
  )
  parser.add_argument(
    "--profile", action="store_true", help="print where one Flax training step spends its time"
  )
  add_precision_argument(parser)
  args = parser.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel

  if args.precision == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

  device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  torch.set_num_threads(os.cpu_count() or 1)
  peak = matmul_peak(8192 if device == "cuda" else 2048)
  print(
    f"device {device} ({jax.devices()[0].device_kind}), batch {args.batch}, "
    f"{args.size}x{args.size}, precision {args.precision}, torch threads "
    f"{torch.get_num_threads()}, "
    f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s"
  )
  paths = {"both": ("auto", "lax"), "onednn": ("auto",), "lax": ("lax",)}[args.conv]
  with layers.use_conv_path(paths[0]):
    conv = layers.conv_path() if device == "cpu" else "lax"
  print(f"Flax convolutions: {conv}" + (", lax beside" if len(paths) > 1 else ""))
  header = (
    f"{'model':24} {'train img/s':>22} {'ratio':>6} {'infer img/s':>22} {'ratio':>6} "
    f"{'Flax % peak':>11}" + (f" {'lax train':>10} {'lax infer':>10}" if len(paths) > 1 else "")
  )
  print(
    header + "\n" + f"{'':24} {'flax':>10} {'torchvision':>11} {'':6} {'flax':>10} "
    f"{'torchvision':>11}"
  )
  rows = []
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, size=args.batch).astype(np.int32)
  for name in args.models.split(","):
    if name not in TORCHVISION:
      raise ValueError(f"--models: expected names from {sorted(TORCHVISION)}; received {name!r}.")
    importlib.import_module(f"research.models.{name.split('.')[0]}")
    tv_name, kwargs = TORCHVISION[name]
    t_train, t_infer, state_dict = torch_timings(
      tv_name, kwargs, x, labels, args.steps, args.warmup, device
    )
    f_train, f_infer, flops, faults, step_profile = flax_timings(
      name, state_dict, x, labels, args.steps, args.warmup, profiled=args.profile, conv=paths[0]
    )
    row = {
      "model": name,
      "device": device,
      "flax_conv": conv,
      "keep_freed_memory": host_memory.kept(),
      "batch": args.batch,
      "size": args.size,
      "precision": args.precision,
      "flax_train_img_s": args.batch / f_train,
      "torch_train_img_s": args.batch / t_train,
      "flax_infer_img_s": args.batch / f_infer,
      "torch_infer_img_s": args.batch / t_infer,
      "flax_train_flops_per_step": flops,
      "flax_train_page_faults_per_step": faults,
      "flax_train_fraction_of_peak": flops / f_train / peak if flops else None,
      "matmul_peak_flop_s": peak,
    }
    row["train_ratio"] = row["flax_train_img_s"] / row["torch_train_img_s"]
    row["infer_ratio"] = row["flax_infer_img_s"] / row["torch_infer_img_s"]
    lax_columns = ""
    if len(paths) > 1:
      l_train, l_infer, _, _, _ = flax_timings(
        name, state_dict, x, labels, args.steps, args.warmup, conv="lax"
      )
      row["flax_lax_train_img_s"] = args.batch / l_train
      row["flax_lax_infer_img_s"] = args.batch / l_infer
      lax_columns = f" {row['flax_lax_train_img_s']:10.1f} {row['flax_lax_infer_img_s']:10.1f}"
    rows.append(row)
    frac = row["flax_train_fraction_of_peak"]
    print(
      f"{name:24} {row['flax_train_img_s']:10.1f} {row['torch_train_img_s']:11.1f} "
      f"{row['train_ratio']:6.2f} {row['flax_infer_img_s']:10.1f} "
      f"{row['torch_infer_img_s']:11.1f} {row['infer_ratio']:6.2f} "
      f"{(100 * frac if frac else float('nan')):10.1f}%" + lax_columns,
      flush=True,
    )
    if step_profile:
      print(
        f"  one Flax training step of {name}, by kind of operation:\n{step_profile}", flush=True
      )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  # As research.main does, before JAX starts (tests call main() in their own processes).
  host_memory.keep_freed_memory()
  main()
