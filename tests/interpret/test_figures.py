"""The paper figures: each writes a readable PNG whose shape follows its content, and bad
input fails with a ValueError naming the argument."""

from __future__ import annotations

import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from research.interpret import figures

RNG = np.random.default_rng(0)


def _read(path) -> np.ndarray:
  """The PNG as [rows, cols, channels]; also checks that the file exists."""
  assert os.path.isfile(path)
  arr = mpimg.imread(path)
  assert arr.ndim == 3 and arr.shape[0] > 50 and arr.shape[1] > 50
  return arr


def _images(n, h=24, w=24, c=3, dtype=np.float32):
  if dtype == np.uint8:
    return RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8)
  return RNG.normal(size=(n, h, w, c)).astype(dtype)


def _top(f=3, k=9, r=7, c=3):
  return {
    "values": RNG.random((f, k)),
    "image_index": RNG.integers(0, 50, (f, k)),
    "position": RNG.integers(0, 5, (f, k, 2)),
    "box": np.tile(np.array([0, 0, r, r]), (f, k, 1)),
    "patches": RNG.normal(size=(f, k, r, r, c)),
    "projections": RNG.normal(size=(f, k, r, r, c)),
    "inside_energy": np.ones((f, k)),
  }


def _maps(h=24, w=24, patch=8, stride=4, activation=True, classes=12):
  rows, cols = np.arange(0, h - patch + 1, stride), np.arange(0, w - patch + 1, stride)
  grid = (len(rows), len(cols))
  maps = {
    "probability": RNG.random(grid),
    "top_class": RNG.integers(0, classes, grid),
    "top_probability": RNG.random(grid),
    "rows": rows,
    "cols": cols,
    "clean_probability": 0.9,
    "channel": 0,
  }
  if activation:
    maps["activation"] = RNG.normal(size=grid)
    maps["clean_activation"] = 1.0
  return maps


def test_top_activations_grid(tmp_path):
  one = _read(figures.top_activations_grid({"relu1": _top()}, tmp_path / "a" / "one.png"))
  tops = {"relu1": _top(r=5, c=1), "relu2": _top(r=9, c=1), "relu3": _top(f=12, r=13, c=1)}
  path = figures.top_activations_grid(tops, tmp_path / "three.png", max_maps=4)
  assert path == str(tmp_path / "three.png")
  three = _read(path)
  assert three.shape[0] > one.shape[0]  # more layers: taller
  assert three.shape[1] > one.shape[1]  # 4 maps in the widest layer against 3
  # k = 5 gives a 3-wide mosaic with empty cells
  _read(figures.top_activations_grid({"pool5": _top(k=5)}, tmp_path / "k5.png"))


def test_top_activations_grid_bad_input(tmp_path):
  with pytest.raises(ValueError, match="non-empty"):
    figures.top_activations_grid({}, tmp_path / "x.png")
  top = _top()
  top["patches"] = top["patches"][:, :, :3]
  with pytest.raises(ValueError, match="same shape"):
    figures.top_activations_grid({"relu1": top}, tmp_path / "x.png")
  top = _top()
  top["projections"] = top["projections"][0]
  with pytest.raises(ValueError, match=r"tops\['relu1'\]\['projections'\].*\[F, k, rh, rw, C\]"):
    figures.top_activations_grid({"relu1": top}, tmp_path / "x.png")
  top = _top()
  del top["patches"]
  with pytest.raises(ValueError, match="'patches'"):
    figures.top_activations_grid({"relu1": top}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="max_maps"):
    figures.top_activations_grid({"relu1": _top()}, tmp_path / "x.png", max_maps=0)
  assert not (tmp_path / "x.png").exists()


def test_occlusion_panels(tmp_path):
  images = _images(3, 24, 32, dtype=np.uint8)
  maps = [_maps(24, 32, activation=True), _maps(24, 32, activation=False), _maps(24, 32)]
  boxes = np.array([[2, 3, 20, 15], [0, 0, 32, 24], [5, 5, 6, 6]])
  names = [f"class {i}" for i in range(12)]
  kwargs = {"patch": 8, "class_names": names}
  three = _read(
    figures.occlusion_panels(images, maps, boxes, [1, 2, 3], tmp_path / "d" / "o.png", **kwargs)
  )
  one = _read(
    figures.occlusion_panels(images[:1], maps[:1], boxes[:1], [1], tmp_path / "o1.png", **kwargs)
  )
  assert three.shape[0] > 2 * one.shape[0]  # one row per image
  assert three.shape[1] == one.shape[1]
  # no activation anywhere: one column fewer; grey images, (rows, cols) patch
  grey = [_maps(24, 32, activation=False, classes=2)]
  narrow = _read(
    figures.occlusion_panels(
      images[:1, ..., :1], grey, None, [0], tmp_path / "o2.png", patch=(8, 8)
    )
  )
  assert narrow.shape[1] < one.shape[1]


def test_map_extent_centres_cells_on_occluders():
  rows, cols = np.arange(0, 17, 4), np.arange(0, 25, 4)
  x0, x1, y1, y0 = figures._map_extent(rows, cols, (8, 8))
  # cell centres at r + 4: the first at 4, cells 4 wide
  assert (x0, y0) == (2.0, 2.0)
  assert (x1, y1) == (cols[-1] + 6.0, rows[-1] + 6.0)


def test_occlusion_panels_bad_input(tmp_path):
  images, maps, boxes = _images(2), [_maps(), _maps()], np.zeros((2, 4))
  path = tmp_path / "x.png"
  with pytest.raises(
    ValueError, match=r"maps_list must have one entry per images \(2\); received 1"
  ):
    figures.occlusion_panels(images, maps[:1], boxes, [0, 1], path, patch=8)
  with pytest.raises(ValueError, match="labels"):
    figures.occlusion_panels(images, maps, boxes, [0], path, patch=8)
  with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
    figures.occlusion_panels(images, maps, boxes[:, :3], [0, 1], path, patch=8)
  with pytest.raises(ValueError, match=r"images must be \[N, H, W, C\]"):
    figures.occlusion_panels(images[0], maps, boxes, [0, 1], path, patch=8)
  bad = _maps()
  bad["probability"] = bad["probability"][:-1]
  with pytest.raises(ValueError, match=r"maps_list\[1\]\['probability'\]"):
    figures.occlusion_panels(images, [maps[0], bad], boxes, [0, 1], path, patch=8)
  with pytest.raises(ValueError, match="patch"):
    figures.occlusion_panels(images, maps, boxes, [0, 1], path, patch=(8, 0))
  assert not path.exists()


def test_class_models_grid(tmp_path):
  few = _read(figures.class_models_grid(_images(3), [0, 1, 2], tmp_path / "c3.png"))
  many = _read(
    figures.class_models_grid(
      _images(10, c=1), np.arange(10), tmp_path / "c" / "c10.png", class_names=list("abcdefghij")
    )
  )
  assert many.shape[0] > 2 * few.shape[0]  # 3 rows of 4 against 1 row
  assert many.shape[1] > few.shape[1]
  with pytest.raises(ValueError, match=r"labels must have one entry per images \(3\)"):
    figures.class_models_grid(_images(3), [0, 1], tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"C = 1 or 3"):
    figures.class_models_grid(_images(3, c=2), [0, 1, 2], tmp_path / "x.png")


def test_saliency_panels(tmp_path):
  images, maps = _images(6, 20, 30), RNG.random((6, 20, 30))
  true = np.array([[2, 2, 12, 10]] * 6)
  pred = true + 1
  path = figures.saliency_panels(
    images, maps, tmp_path / "s" / "s.png", true_boxes=true, predicted_boxes=pred
  )
  six = _read(path)
  three = _read(figures.saliency_panels(images[:3], maps[:3], tmp_path / "s3.png"))
  assert six.shape[0] > three.shape[0]  # two rows of 3 pairs against one
  tall = _read(figures.saliency_panels(images, maps, tmp_path / "s1.png", pairs_per_row=1))
  assert tall.shape[0] > tall.shape[1]
  with pytest.raises(ValueError, match=r"saliency_maps must have one entry per images \(6\)"):
    figures.saliency_panels(images, maps[:5], tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"saliency_maps must be \[N, H, W\]"):
    figures.saliency_panels(images, maps[..., None], tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"saliency_maps must be \[N, H, W\] = \(6, 20, 30\)"):
    figures.saliency_panels(images, maps[:, :10], tmp_path / "x.png")
  with pytest.raises(ValueError, match="predicted_boxes"):
    figures.saliency_panels(images, maps, tmp_path / "x.png", predicted_boxes=pred[:2])


def _curve(t=7, layers=("layer1", "layer7"), probability=True):
  curve = {
    "amounts": np.linspace(-30, 30, t),
    "distances": {layer: RNG.random(t) for layer in layers},
  }
  if probability:
    curve["probability"] = RNG.random(t)
  return curve


def test_invariance_curves(tmp_path):
  curves = {"translation": _curve(), "scale": _curve(5), "rotation": _curve(9)}
  both = _read(figures.invariance_curves(curves, tmp_path / "i" / "i.png"))
  curves = {k: _curve(len(v["amounts"]), probability=False) for k, v in curves.items()}
  distances = _read(figures.invariance_curves(curves, tmp_path / "i1.png"))
  assert both.shape[0] > distances.shape[0]  # the probability row
  assert both.shape[1] == distances.shape[1]
  single = _read(figures.invariance_curves({"rotation": _curve()}, tmp_path / "i2.png"))
  assert single.shape[1] < both.shape[1]


def test_invariance_curves_bad_input(tmp_path):
  bad = _curve()
  bad["distances"]["layer7"] = bad["distances"]["layer7"][:3]
  with pytest.raises(ValueError, match=r"\['distances'\]\['layer7'\] must be \[T\] = \(7,\)"):
    figures.invariance_curves({"scale": bad}, tmp_path / "x.png")
  bad = _curve()
  bad["probability"] = bad["probability"][:, None]
  with pytest.raises(ValueError, match=r"\['probability'\]"):
    figures.invariance_curves({"scale": bad}, tmp_path / "x.png")
  bad = _curve()
  bad["amounts"] = bad["amounts"][None]
  with pytest.raises(ValueError, match="amounts"):
    figures.invariance_curves({"scale": bad}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="distances"):
    figures.invariance_curves({"scale": {"amounts": np.arange(3)}}, tmp_path / "x.png")
