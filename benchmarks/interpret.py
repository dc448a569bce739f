"""Occlusion, saliency and deconvnet maps: research.interpret against Captum on the same AlexNet.

    python benchmarks/interpret.py [--size 224] [--patch 32] [--stride 8] [--chunks 32,64,128]
        [--perturbations 1,16,64] [--repeats 3] [--warmup 0] [--torch-threads N] [--quick]
        [--json out.json]

Both libraries run in this one process on the same machine (CPU, or the GPU when
JAX and torch both see one), with the same weights: torchvision's
`alexnet(weights=None)` after `torch.manual_seed(0)`, converted to Flax, in eval
mode. The image is one size x size x 3 draw of N(0, 30^2) (bright, so that the
random weights give confident predictions and the maps are far above rounding),
and the label is the class torchvision predicts for it.

- Occlusion: `occlusion.occlusion(model_fn, image, label, patch, stride, fill=0)`,
  incremental and whole-image, for each chunk size, against Captum's
  `Occlusion(softmax(net)).attribute(..., baselines=0, target=label)` for each
  `perturbations_per_eval`. Also printed: the FLOPs per map of full inference
  (one AlexNet forward per occluder position) against those of a chunk program
  (what occlusion jits per chunk: `incremental.occluded`, or the traced model
  under vmap on whole occluded images) times the number of chunks, from XLA's
  cost analysis of the lowered programs (as throughput.py counts them).
- Saliency: `saliency.saliency(model_fn, image, label)` (the eager public call,
  and the same under `jax.jit`) against Captum's `Saliency(net)` with abs=True.
- Deconvnet: `deconvnet.project(model, variables, image, layer="relu5",
  channel=c)` (the public call, and its jitted core `project_units`) against
  Captum's `NeuronDeconvolution(net, net.features[11])` at the same unit.

Each call blocks until done. The first call of each is timed on its own (ours
compiles then) and is the warm-up; after `--warmup` more untimed calls, the
calls take turns for `--repeats` rounds, so that load from other processes hits
all alike, and the median is printed. Speed-up: Captum's best seconds / ours
(above 1: ours is faster). Each method's maps are also compared with Captum's.
torch uses os.cpu_count() threads, as in throughput.py and boxes.py
(--torch-threads to change it); on a machine busy with other work, torch's
OpenMP threads can slow down many times over, so time on a quiet machine.
--quick is a smoke test (96x96, fewer settings, one repeat), not a timing.
Needs jax, flax, torch, torchvision and captum.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.convert import torchvision as tv_convert  # noqa: E402
from research.interpret import deconvnet, graph, incremental, occlusion, saliency  # noqa: E402
from research.models.alexnet import AlexNet  # noqa: E402

# Defaults, and those of --quick: a smoke test with a small image, fewer settings (Captum's one
# image per forward is the slowest) and one timed call of each. Flags given explicitly win.
FULL = dict(
  size=224, patch=32, stride=8, chunks=[32, 64, 128], perturbations=[1, 16, 64], repeats=3
)
QUICK = dict(size=96, patch=24, stride=8, chunks=[32, 128], perturbations=[16, 64], repeats=1)


def _timed(fns: dict, repeats: int, warmup: int) -> dict:
  """{name: (first-call seconds, median seconds)} of each `fn` (which blocks until done).

  The first call of each is timed on its own; then `warmup` untimed calls each; then
  `repeats` rounds in which the calls take turns. The median, not the mean: on a shared
  machine a few calls land on a busy core.
  """
  first = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - start
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: (first[name], float(np.median(t))) for name, t in times.items()}


def _flops(jitted, *args) -> float:
  """FLOPs of `jitted` at `args`, as throughput.py counts them: from XLA's cost analysis of
  the program lowered for the CPU (a GPU lowering counts its convolutions as zero)."""
  cost = jitted.trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _table(header: list[str], rows: list[list[str]]) -> str:
  """A markdown table; every column but the first two right-aligned."""
  align = ["---", "---"] + ["---:"] * (len(header) - 2)
  lines = [header, align, *rows]
  return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _row(method, implementation, setting, first, seconds, best):
  return {
    "method": method,
    "implementation": implementation,
    "setting": setting,
    "first_call_s": first,
    "s_per_map": seconds,
    "maps_per_s": 1.0 / seconds,
    "speedup_vs_captum_best": best / seconds,
  }


def _cells(r: dict) -> list[str]:
  return [
    r["implementation"],
    r["setting"],
    f"{r['first_call_s']:.4g}",
    f"{r['s_per_map']:.4g}",
    f"{r['maps_per_s']:.4g}",
    f"{r['speedup_vs_captum_best']:.2f}x",
  ]


HEADER = ["implementation", "setting", "first call s", "s per map", "maps/s", "Captum best / ours"]


def bench_occlusion(ctx, args) -> dict:
  """Seconds per map of every setting, FLOPs per map and the maps' agreement."""
  torch, captum_attr = ctx["torch"], ctx["captum_attr"]
  model, variables, image, label = ctx["model"], ctx["variables"], ctx["image"], ctx["label"]
  net, x, sync = ctx["net"], ctx["x"], ctx["sync"]
  size, patch, stride = args.size, args.patch, args.stride
  model_fn = lambda t: model.apply(variables, t)
  rows, cols = occlusion.positions((size, size), patch, stride)
  count = len(rows) * len(cols)

  occluder = captum_attr.Occlusion(lambda t: torch.softmax(net(t), -1))

  def theirs(p):
    with torch.no_grad():
      out = occluder.attribute(
        x,
        sliding_window_shapes=(3, patch, patch),
        strides=(3, stride, stride),
        baselines=0.0,
        target=label,
        perturbations_per_eval=p,
      )
    sync()
    return out

  def ours(use_incremental, chunk):
    return occlusion.occlusion(
      model_fn,
      image,
      label,
      patch=patch,
      stride=stride,
      fill=0.0,
      chunk_size=chunk,
      use_incremental=use_incremental,
    )

  fns = {("captum", p): functools.partial(theirs, p) for p in args.perturbations}
  for use_incremental in (True, False):
    for chunk in args.chunks:
      fns[("ours", use_incremental, chunk)] = functools.partial(ours, use_incremental, chunk)
  t = _timed(fns, args.repeats, args.warmup)
  captum_key = min((k for k in t if k[0] == "captum"), key=lambda k: t[k][1])
  best = t[captum_key][1]
  results = []
  for key, (first, seconds) in t.items():
    if key[0] == "captum":
      results.append(
        _row("occlusion", "Captum", f"perturbations_per_eval={key[1]}", first, seconds, best)
      )
    else:
      setting = f"{'incremental' if key[1] else 'whole-image'}, chunk_size={key[2]}"
      results.append(_row("occlusion", "ours", setting, first, seconds, best))
  ours_best = min(
    (r for r in results if r["implementation"] == "ours"), key=lambda r: r["s_per_map"]
  )

  # FLOPs per map: full inference (one forward per occluder position) vs programs that do
  # what occlusion's chunks do (incremental.occluded, or the traced model under vmap on whole
  # occluded images), on the model's traced program.
  single = _flops(jax.jit(lambda v, t: model.apply(v, t)[0]), variables, image[None])
  closed = graph.trace(lambda t: model_fn(t)[0], image[None])
  consts = list(closed.consts)

  def incremental_chunk(consts, image, origin):
    dirty = jnp.zeros((origin.shape[0], patch, patch, image.shape[-1]), image.dtype)
    return incremental.occluded(closed, consts, image, dirty, origin)

  def whole_chunk(consts, image, origin):
    dirty = jnp.zeros((patch, patch, image.shape[-1]), image.dtype)
    images = jax.vmap(lambda o: jax.lax.dynamic_update_slice(image, dirty, (o[0], o[1], 0)))(origin)
    return jax.vmap(lambda t: graph.run(closed, [t[None]], consts)[0][0])(images)

  flops = {"positions": count, "alexnet_forward": single, "full_inference": count * single}
  programs = []
  for use_incremental, program in ((True, incremental_chunk), (False, whole_chunk)):
    for chunk in args.chunks:
      origin = jnp.zeros((chunk, 2), jnp.int32)
      chunks = math.ceil(count / chunk)
      per_map = _flops(jax.jit(program), consts, image, origin) * chunks
      programs.append(
        {
          "program": f"{'incremental' if use_incremental else 'whole-image'}, chunk_size={chunk}",
          "chunks": chunks,
          "images": chunks * chunk,
          "flops_per_map": per_map,
          "full_over_this": count * single / per_map if per_map else None,
        }
      )
  flops["programs"] = programs

  # Agreement: Captum's attribution is, per pixel, the mean drop in probability over the
  # windows that cover it; ours gives it from the maps.
  maps = ours(True, args.chunks[0])
  mine = occlusion.attribution(maps, (size, size), patch)
  their = theirs(args.perturbations[-1])[0, 0].cpu().numpy()
  agreement = float(np.abs(mine - their).max() / max(np.abs(their).max(), 1e-30))

  return {
    "positions": count,
    "rows": results,
    "captum_best": {"setting": f"perturbations_per_eval={captum_key[1]}", "s_per_map": best},
    "ours_best": {"setting": ours_best["setting"], "s_per_map": ours_best["s_per_map"]},
    "speedup_best_vs_captum_best": best / ours_best["s_per_map"],
    "flops": flops,
    "max_abs_difference_over_max": agreement,
  }


def bench_saliency(ctx, args) -> dict:
  captum_attr = ctx["captum_attr"]
  model, variables, image, label = ctx["model"], ctx["variables"], ctx["image"], ctx["label"]
  net, sync = ctx["net"], ctx["sync"]
  x = ctx["x"].clone().requires_grad_()
  model_fn = lambda t: model.apply(variables, t)
  jitted = jax.jit(lambda v, t, y: saliency.saliency(functools.partial(model.apply, v), t, y))
  label_j = jnp.asarray(label)
  sal = captum_attr.Saliency(net)

  def theirs():
    out = sal.attribute(x, target=label, abs=True).amax(dim=1)
    sync()
    return out

  fns = {
    "captum": theirs,
    "eager": lambda: saliency.saliency(model_fn, image, label).block_until_ready(),
    "jit": lambda: jitted(variables, image, label_j).block_until_ready(),
  }
  t = _timed(fns, args.repeats, args.warmup)
  best = t["captum"][1]
  rows = [
    _row("saliency", "Captum", "Saliency, abs=True, max over channels", *t["captum"], best),
    _row("saliency", "ours", "saliency (eager public call)", *t["eager"], best),
    _row("saliency", "ours", "saliency under jax.jit", *t["jit"], best),
  ]
  mine = np.asarray(saliency.saliency(model_fn, image, label))
  their = theirs()[0].detach().cpu().numpy()
  agreement = float(np.abs(mine - their).max() / max(np.abs(their).max(), 1e-30))
  return {"rows": rows, "max_abs_difference_over_max": agreement}


def bench_deconvnet(ctx, args) -> dict:
  torch, captum_attr = ctx["torch"], ctx["captum_attr"]
  model, variables, image = ctx["model"], ctx["variables"], ctx["image"]
  net, sync = ctx["net"], ctx["sync"]
  for m in net.modules():  # Captum hooks ReLU modules; in-place ones cannot be hooked.
    if isinstance(m, torch.nn.ReLU):
      m.inplace = False
  x = ctx["x"].clone().requires_grad_()
  values, positions = deconvnet.strongest_units(model, variables, image[None], layer="relu5")
  channel = int(jnp.argmax(values[0])) if args.channel is None else args.channel
  i, j = (int(v) for v in positions[0, channel])
  deconv = captum_attr.NeuronDeconvolution(net, net.features[11])  # relu5

  def theirs():
    out = deconv.attribute(x, neuron_selector=(channel, i, j))
    sync()
    return out

  def ours():
    return deconvnet.project(
      model, variables, image, layer="relu5", channel=channel
    ).block_until_ready()

  def core():
    return deconvnet.project_units(
      model,
      variables,
      image[None],
      layer="relu5",
      channels=jnp.asarray([channel]),
      positions=positions[:, channel],
    ).block_until_ready()

  t = _timed({"captum": theirs, "project": ours, "core": core}, args.repeats, args.warmup)
  best = t["captum"][1]
  unit = f"relu5 channel {channel} at ({i}, {j})"
  rows = [
    _row("deconvnet", "Captum", f"NeuronDeconvolution, {unit}", *t["captum"], best),
    _row("deconvnet", "ours", "project (public call)", *t["project"], best),
    _row("deconvnet", "ours", "project_units (its jitted core)", *t["core"], best),
  ]
  mine = np.asarray(ours()).ravel()
  their = theirs()[0].detach().cpu().numpy().transpose(1, 2, 0).ravel()
  cosine = float(mine @ their / max(np.linalg.norm(mine) * np.linalg.norm(their), 1e-30))
  return {"rows": rows, "channel": channel, "position": [i, j], "cosine": cosine}


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=None, help="image side (224; 96 with --quick)")
  parser.add_argument("--patch", type=int, default=None, help="occluder side (32; 24 with --quick)")
  parser.add_argument("--stride", type=int, default=None, help="occluder stride (8)")
  parser.add_argument(
    "--chunks", type=_ints, default=None, help="our chunk sizes (32,64,128; 32,128 with --quick)"
  )
  parser.add_argument(
    "--perturbations",
    type=_ints,
    default=None,
    help="Captum's perturbations_per_eval (1,16,64; 16,64 with --quick)",
  )
  parser.add_argument(
    "--repeats", type=int, default=None, help="timed calls of each, median (3; 1 with --quick)"
  )
  parser.add_argument("--warmup", type=int, default=0, help="untimed calls after the first")
  parser.add_argument("--channel", type=int, default=None, help="deconvnet relu5 map (strongest)")
  parser.add_argument(
    "--torch-threads",
    type=int,
    default=os.cpu_count() or 1,
    help="torch.set_num_threads, as throughput.py and boxes.py set it (os.cpu_count()); "
    "0 leaves torch's default",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a smoke test: 96x96, patch 24, stride 8, chunks 32,128, perturbations 16,64, "
    "1 repeat (flags given explicitly win)",
  )
  parser.add_argument("--json", default=None, help="also write the results to this file")
  args = parser.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)

  # Captum says so at every NeuronDeconvolution call; the hooks are what it measures.
  warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
  import captum  # pylint: disable=import-outside-toplevel
  import captum.attr as captum_attr  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  if args.torch_threads > 0:
    torch.set_num_threads(args.torch_threads)
  device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  torch.manual_seed(0)
  net = torchvision.models.alexnet(weights=None).eval()
  model = AlexNet(num_classes=1000)
  variables = tv_convert.convert(net.state_dict(), model, input_shape=(1, args.size, args.size, 3))
  net = net.to(device)
  image_np = np.random.default_rng(0).normal(scale=30.0, size=(args.size, args.size, 3))
  image_np = image_np.astype(np.float32)
  x = torch.from_numpy(np.ascontiguousarray(image_np.transpose(2, 0, 1)[None])).to(device)
  with torch.no_grad():
    label = int(net(x).argmax())
  ctx = {
    "torch": torch,
    "captum_attr": captum_attr,
    "net": net,
    "x": x,
    "sync": sync,
    "model": model,
    "variables": variables,
    "image": jnp.asarray(image_np),
    "label": label,
  }
  rows, cols = occlusion.positions((args.size, args.size), args.patch, args.stride)
  print(
    f"{os.cpu_count()} cores (os.cpu_count()), device {device} ({jax.devices()[0].device_kind}), "
    f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
    f"captum {captum.__version__}; AlexNet, one {args.size}x{args.size} image, label {label}; "
    f"occluder {args.patch}x{args.patch} stride {args.stride} "
    f"({len(rows)}x{len(cols)} = {len(rows) * len(cols)} positions); seconds: median of "
    f"{args.repeats} calls after the first call{f' and {args.warmup} more' if args.warmup else ''}",
    flush=True,
  )

  results = {
    "machine": {
      "cpu_count": os.cpu_count(),
      "device": device,
      "device_kind": jax.devices()[0].device_kind,
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "captum": captum.__version__,
    },
    "args": vars(args),
    "label": label,
  }

  occ = results["occlusion"] = bench_occlusion(ctx, args)
  print(f"\n### Occlusion ({occ['positions']} occluded images per map)\n")
  print(_table(HEADER, [_cells(r) for r in occ["rows"]]))
  print(
    f"\nCaptum best: {occ['captum_best']['setting']}, {occ['captum_best']['s_per_map']:.4g} s; "
    f"ours best: {occ['ours_best']['setting']}, {occ['ours_best']['s_per_map']:.4g} s; "
    f"Captum best / ours best = {occ['speedup_best_vs_captum_best']:.2f}x. "
    f"Attributions: max |ours - Captum| / max |Captum| = "
    f"{occ['max_abs_difference_over_max']:.1e}."
  )
  f = occ["flops"]
  flop_rows = [
    [
      "full inference",
      f"{f['positions']} images x {f['alexnet_forward'] / 1e9:.3g} GFLOP",
      f"{f['full_inference'] / 1e9:.4g}",
      "1.00x",
    ]
  ]
  for p in f["programs"]:
    ratio = f"{p['full_over_this']:.2f}x" if p["full_over_this"] else "n/a"
    count = f"{p['chunks']} chunks = {p['images']} images"
    flop_rows.append([p["program"], count, f"{p['flops_per_map'] / 1e9:.4g}", ratio])
  print(
    "\nFLOPs per map, from XLA's cost analysis of the lowered programs. Full inference runs "
    "AlexNet once per occluder position; a chunk program's count is per chunk times the "
    "chunks, the last chunk's padding included (whole-image = chunk_size x AlexNet).\n"
  )
  header = ["program", "images computed", "GFLOP per map", "full inference / this"]
  print(_table(header, flop_rows), flush=True)

  sal = results["saliency"] = bench_saliency(ctx, args)
  print("\n### Saliency\n")
  print(_table(HEADER, [_cells(r) for r in sal["rows"]]))
  print(f"\nMaps: max |ours - Captum| / max |Captum| = {sal['max_abs_difference_over_max']:.1e}.")

  dec = results["deconvnet"] = bench_deconvnet(ctx, args)
  print("\n### Deconvnet (one projection)\n")
  print(_table(HEADER, [_cells(r) for r in dec["rows"]]))
  print(f"\nProjections: cosine(ours, Captum) = {dec['cosine']:.6f}.", flush=True)

  if args.json:
    with open(args.json, "w", encoding="utf-8") as fh:
      json.dump(results, fh, indent=2)
  return results


if __name__ == "__main__":
  main()
