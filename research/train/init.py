"""Pretrained initialization (`config.init`): weights into the whole model or a sub-tree.

    config.init = ConfigDict({
        "path": "workdirs/resnet18_mnist5k",   # a run's workdir (its latest checkpoint), or
                                              # a torchvision state_dict file (.pth/.pt)
        "source_prefix": "",   # workdir sources: the sub-tree of the source run to read
        "target_prefix": "",   # the sub-tree of this model to fill, e.g. "backbone"; several
                               # as "backbone/body,roi_heads/box_head" (or a sequence)
        "exclude": ("fc",),    # regexes of this model's paths left freshly initialized
        "convolutionalize": False,  # a VGG classifier source into an FCN: see below
    })

A plain string is `path` alone. With several target prefixes each fills its sub-tree
from the same source, every path taken relative to its own prefix: the paper's Faster
R-CNN takes VGG-16's `features.*` into "backbone/body" and its fc6/fc7 (`classifier.0`,
`classifier.3`) into "roi_heads/box_head" from one torchvision file. Paths are module
names joined by "/" with the leaf last, "layer1.0/conv1/kernel": torchvision's dotted
names stay whole. Every target array (under `target_prefix`, not excluded) must be found
in the source with the same shape, else a ValueError names the parameter and both
shapes; source arrays nothing asked for are ignored and logged (a classifier's head
under a backbone). The run logs what was loaded and what was left fresh. A run that
resumes from its own checkpoint does not load again.

`convolutionalize: True` reads a VGG classifier (a torchvision vgg16 .pth, or a workdir of
`vgg.VGG16`) as FCN's convolutionalized net (`research.models.fcn.convolutionalize`): its
fully connected layers are reshaped, not discarded: classifier.0 [hidden, C * 7 * 7] ->
fc6 7x7 conv [7, 7, C, hidden], classifier.3 -> fc7 1x1, classifier.6 -> score_fr 1x1 (a
score_fr of another class count is excluded with init.exclude and starts fresh).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from ml_collections import ConfigDict

from research.convert import torchvision as tv

log = logging.getLogger(__name__)

INIT_KEYS = ("path", "source_prefix", "target_prefix", "exclude", "convolutionalize")
# FCN's convolutionalized layers and the torchvision VGG classifier layers they come from.
CONVOLUTIONALIZED = {"fc6": "classifier.0", "fc7": "classifier.3", "score_fr": "classifier.6"}
COLLECTIONS = ("params", "batch_stats")


def spec_of(init) -> ConfigDict:
  """`config.init` (a path string, a dict or a ConfigDict) -> a ConfigDict of INIT_KEYS."""
  if isinstance(init, str | os.PathLike):
    init = {"path": os.fspath(init)}
  spec = ConfigDict(dict(init))
  unknown = sorted(set(spec.keys()) - set(INIT_KEYS))
  if unknown:
    raise ValueError(f"init: expected the keys {list(INIT_KEYS)}; received {unknown}.")
  if not spec.get("path"):
    raise ValueError("init.path: expected a run's workdir or a .pth file; received nothing.")
  return spec


def _split(prefix: str | None) -> tuple[str, ...]:
  return tuple(p for p in (prefix or "").split("/") if p)


def _prefixes(value) -> list[tuple[str, ...]]:
  """target_prefix -> its prefixes, longest first: "" -> [()]; "a/b,c" -> [("a", "b"), ("c",)]."""
  items = value.split(",") if isinstance(value, str) else list(value or ())
  prefixes = sorted({_split(item) for item in items}, key=lambda p: (-len(p), p))
  return prefixes or [()]


def _name(path: tuple[str, ...]) -> str:
  return "/".join(path)


def _latest_checkpoint(workdir: str) -> dict:
  """{"params": tree, "batch_stats": tree} of numpy arrays from `workdir`'s newest checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f"init.path: expected a run's workdir with checkpoints in {directory!r}; found none."
    )
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"init.path: expected a run's workdir with checkpoints in {directory!r}; found none."
      )
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored["state"]
  log.info("init: reading checkpoint %d of %s", step, workdir)
  return {c: jax.device_get(state.get(c) or {}) for c in COLLECTIONS}


def _source(spec: ConfigDict, wanted: dict) -> tuple[dict, str]:
  """{(collection, path relative to the prefixes): array} the source has for `wanted`
  ({(collection, relative path): target shape}), and a description of the source."""
  path = spec.path
  convolutionalize = bool(spec.get("convolutionalize"))
  if isinstance(path, Mapping):  # a state_dict already in memory (API callers)
    weights = tv.load_state_dict(path)
    if convolutionalize:
      weights = _convolutionalize_torchvision(weights, "a torchvision state_dict")
    return _from_torchvision(weights, wanted), "a torchvision state_dict"
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.isdir(path):
    flat = {}
    prefix = _split(spec.get("source_prefix"))
    checkpoint = _latest_checkpoint(path)
    if convolutionalize:
      checkpoint = _convolutionalize_workdir(checkpoint, prefix, path)
    for collection, tree in checkpoint.items():
      for p, v in traverse_util.flatten_dict(tree).items():
        if p[: len(prefix)] == prefix:
          flat[(collection, p[len(prefix) :])] = np.asarray(v)
    return flat, path
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"init.path: expected a run's workdir or a torchvision state_dict file; {path!r} does "
      "not exist."
    )
  if spec.get("source_prefix"):
    raise ValueError(
      "init.source_prefix: only a workdir source has sub-trees; a state_dict is addressed by "
      f"the target's own names. Received {spec.source_prefix!r} with the file {path!r}."
    )
  weights = tv.load_state_dict(path)
  if convolutionalize:
    weights = _convolutionalize_torchvision(weights, path)
  return _from_torchvision(weights, wanted), path


def _convolutionalize_torchvision(weights: dict, where: str) -> dict:
  """torchvision VGG keys -> FCN's: classifier.N.weight [out, in] become fc6 / fc7 /
  score_fr conv weights [out, C, k, k] (in = C k k in torch's (C, H, W) flatten order, the
  order `fcn.convolutionalize` undoes), the features.* kept."""
  if "classifier.0.weight" not in weights:
    raise ValueError(
      f"init.convolutionalize: {where} has no VGG classifier (classifier.0.weight); its keys "
      f"look like {sorted(weights)[:6]}."
    )
  out = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
  for name, source in CONVOLUTIONALIZED.items():
    if f"{source}.weight" not in weights:
      continue
    weight = weights[f"{source}.weight"]
    size = 7 if name == "fc6" else 1
    out[f"{name}.weight"] = weight.reshape(weight.shape[0], -1, size, size)
    out[f"{name}.bias"] = weights[f"{source}.bias"]
  return out


def _convolutionalize_workdir(checkpoint: dict, prefix: tuple[str, ...], where: str) -> dict:
  """A VGG run's {"params": tree, "batch_stats": tree} -> the same with its classifier
  convolutionalized (`fcn.convolutionalize`) at `prefix` (init.source_prefix)."""
  from research.models import fcn  # pylint: disable=import-outside-toplevel

  def at_prefix(tree):
    for part in prefix:
      tree = (tree or {}).get(part, {})
    return tree or {}

  source = {c: at_prefix(checkpoint.get(c)) for c in COLLECTIONS}
  try:
    converted = fcn.convolutionalize(source)
  except ValueError as e:
    raise ValueError(f"init.convolutionalize: {where}: {e}") from e
  for part in reversed(prefix):
    converted = {c: {part: tree} for c, tree in converted.items()}
  return {**checkpoint, **converted}


def _from_torchvision(weights: dict, wanted: dict) -> dict:
  """torchvision keys -> {(collection, path): array in Flax layout}; unrequested keys stay
  under their torchvision name (collection "torchvision") to be reported as ignored."""
  out, used = {}, set()
  for (collection, path), shape in wanted.items():
    try:
      key = tv.torchvision_key(collection, path)
    except KeyError:
      continue  # no torchvision counterpart: reported missing
    if key in weights:
      out[(collection, path)] = tv.from_torch_layout(weights[key], len(shape))
      used.add(key)
  for key in set(weights) - used:
    out[("torchvision", (key,))] = weights[key]
  return out


def load(init, variables: dict) -> tuple[dict, dict]:
  """`variables` ({"params", "batch_stats"} of a freshly initialized model) with the
  arrays of `init` (see the module docstring) in place.

  Returns (variables, report) with report = {"loaded": [names], "fresh": [names],
  "ignored": [source names]}. Raises FileNotFoundError for a missing path and
  ValueError naming every missing or mis-shaped parameter.
  """
  spec = spec_of(init)
  prefixes = _prefixes(spec.get("target_prefix"))
  excludes = [re.compile(p) for p in spec.get("exclude") or ()]
  flat = {
    (c, p): v
    for c in COLLECTIONS
    for p, v in traverse_util.flatten_dict(dict(variables.get(c) or {})).items()
  }
  for prefix in prefixes:
    if prefix and not any(p[: len(prefix)] == prefix for _, p in flat):
      raise ValueError(
        f"init.target_prefix: no parameter of the model lies under {_name(prefix)!r}; "
        f"its top-level modules are {sorted({p[0] for _, p in flat})}."
      )
  for pattern in excludes:
    if not any(pattern.search(_name(p)) for _, p in flat):
      raise ValueError(
        f"init.exclude: the pattern {pattern.pattern!r} matches no parameter of the model; "
        f"its paths look like {[_name(p) for _, p in list(flat)[:4]]}."
      )
  # targets: {(collection, full path): path relative to its (longest) prefix}.
  targets, fresh = {}, []
  for c, p in flat:
    prefix = next((q for q in prefixes if p[: len(q)] == q), None)
    if prefix is None or any(e.search(_name(p)) for e in excludes):
      fresh.append(_name(p))
    else:
      targets[(c, p)] = p[len(prefix) :]
  wanted = {(c, rel): tuple(np.shape(flat[(c, p)])) for (c, p), rel in targets.items()}
  source, where = _source(spec, wanted)
  missing, misshaped = [], []
  for (c, p), rel in targets.items():
    value, shape, full = source.get((c, rel)), tuple(np.shape(flat[(c, p)])), _name(p)
    if value is None:
      missing.append(f"{c}/{full}")
    elif tuple(value.shape) != shape:
      misshaped.append(f"{c}/{full}: the model has {shape}, the source {tuple(value.shape)}")
  if missing or misshaped:
    raise ValueError(
      f"init: {where} does not fit the model"
      + (f"; missing in the source: {missing[:20]}" if missing else "")
      + (f" ({len(missing)} in all)" if len(missing) > 20 else "")
      + (f"; shape mismatches: {misshaped[:20]}" if misshaped else "")
      + ". Exclude parameters to keep fresh with init.exclude"
      + (
        "; nothing matched: does the source need a source_prefix, or the model a target_prefix?"
        if len(missing) == len(targets)
        else "."
      )
    )
  for (c, p), rel in targets.items():
    flat[(c, p)] = np.asarray(source[(c, rel)], np.asarray(flat[(c, p)]).dtype)
  ignored = sorted(_name(p) for k, p in set(source) - set(wanted))
  out = dict(variables)
  for c in COLLECTIONS:
    tree = {p: v for (cc, p), v in flat.items() if cc == c}
    if tree:
      out[c] = traverse_util.unflatten_dict(tree)
  loaded = sorted(_name(p) for _, p in targets)
  report = {"loaded": loaded, "fresh": sorted(fresh), "ignored": ignored}
  count = int(sum(np.size(source[(c, rel)]) for (c, _), rel in targets.items()))
  log.info(
    "init: loaded %d arrays (%s values) from %s into %s; left freshly initialized: %s; "
    "ignored in the source: %s",
    len(targets),
    f"{count:,}",
    where,
    ", ".join(repr(_name(q)) for q in prefixes) if prefixes != [()] else "the whole model",
    fresh or "none",
    ignored[:20] + ([f"... {len(ignored)} in all"] if len(ignored) > 20 else []) or "none",
  )
  return out, report
