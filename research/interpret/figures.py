"""The figures of Zeiler & Fergus (2013) and Simonyan, Vedaldi & Zisserman (2013) as PNG files.

Every function takes numpy arrays (or anything `np.asarray` takes), writes one
PNG at `path` (creating its parent directories) and returns the path. Images
are float or uint8 [H, W, C] with C = 1 (grey) or 3, and each panel is
normalized for display on its own: min-max to [0, 1], except deconvnet
projections, which are signed and shown as ZF show them, x / (2 max|x|) + 0.5,
so that 0 is grey.

Images are drawn with `extent=(0, W, H, 0)`: pixel (row i, column j) covers
[j, j + 1) x [i, i + 1), so boxes (x1, y1, x2, y2) in the pixel-edge convention
of `research.interpret.saliency` (columns x1..x2-1) are drawn as they are.

Figures are bare `matplotlib.figure.Figure`s on an Agg canvas, not pyplot: no
global backend switch, so notebooks keep their inline plots.
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from research.ops.conv import _pair

__all__ = [
  "top_activations_grid",
  "occlusion_panels",
  "class_models_grid",
  "saliency_panels",
  "invariance_curves",
]

_DPI = 100
_TRUE_COLOUR = "lime"
_PREDICTED_COLOUR = "red"
# Units of ZF Fig. 5's transforms, for the x labels.
_UNITS = {"translation": "pixels", "scale": "scale factor", "rotation": "degrees"}


# --- checks -------------------------------------------------------------------------------------


def _shape_error(fn: str, name: str, expected: str, received) -> ValueError:
  return ValueError(f"{fn}: {name} must be {expected}; received shape {tuple(received)}.")


def _images(value, fn: str, name: str = "images") -> np.ndarray:
  """[N, H, W, C] with C in (1, 3), as a numpy array."""
  arr = np.asarray(value)
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
    raise _shape_error(fn, name, "[N, H, W, C] with N, H, W > 0 and C = 1 or 3", arr.shape)
  return arr


def _same_length(fn: str, name: str, value, n: int, what: str = "images") -> None:
  if len(value) != n:
    raise ValueError(f"{fn}: {name} must have one entry per {what} ({n}); received {len(value)}.")


def _boxes(value, n: int, fn: str, name: str) -> np.ndarray | None:
  """None or [n, 4] (x1, y1, x2, y2)."""
  if value is None:
    return None
  arr = np.asarray(value, np.float64)
  if arr.shape != (n, 4):
    raise _shape_error(fn, name, f"[N, 4] = ({n}, 4), one (x1, y1, x2, y2) per image", arr.shape)
  return arr


def _labels(value, n: int, fn: str) -> np.ndarray:
  arr = np.asarray(value)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
      f"{fn}: labels must be integer class indices of shape [N]; received shape "
      f"{arr.shape} of dtype {arr.dtype}."
    )
  _same_length(fn, "labels", arr, n)
  return arr


def _class_name(c: int, class_names) -> str:
  if class_names is not None and 0 <= c < len(class_names):
    return str(class_names[c])
  return str(c)


# --- display normalization ----------------------------------------------------------------------


def _minmax(x: np.ndarray) -> np.ndarray:
  """Min-max to [0, 1]; a constant panel is grey."""
  x = np.asarray(x, np.float64)
  lo, hi = np.nanmin(x), np.nanmax(x)
  if not hi > lo:
    return np.full_like(x, 0.5)
  return (x - lo) / (hi - lo)


def _signed(x: np.ndarray) -> np.ndarray:
  """x / (2 max|x|) + 0.5: 0 maps to grey, the sign survives (ZF's display of projections)."""
  x = np.asarray(x, np.float64)
  m = np.nanmax(np.abs(x))
  if not m > 0:
    return np.full_like(x, 0.5)
  return np.clip(x / (2 * m) + 0.5, 0.0, 1.0)


def _show(ax, image: np.ndarray, **kwargs) -> None:
  """Draws a display-ready [H, W, C] in [0, 1] with pixel edges at integer coordinates."""
  h, w = image.shape[:2]
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    kwargs = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, **kwargs}
  ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest", **kwargs)


def _bare(ax) -> None:
  """No ticks or frame, but (unlike axis('off')) y labels still show."""
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def _draw_box(ax, box, colour: str, label: str | None = None) -> None:
  x1, y1, x2, y2 = box
  ax.add_patch(
    Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5, label=label)
  )


def _mosaic(tiles: np.ndarray, normalize) -> np.ndarray:
  """tiles [k, h, w, C] -> [R (h + 1) - 1, g (w + 1) - 1, C] in [0, 1], g = ceil(sqrt(k)),
  R = ceil(k / g); each tile normalized on its own, white 1-pixel gaps and empty cells."""
  k, h, w, c = tiles.shape
  g = math.ceil(math.sqrt(k))
  rows = math.ceil(k / g)
  out = np.ones((rows * (h + 1) - 1, g * (w + 1) - 1, c))
  for i, tile in enumerate(tiles):
    r, q = divmod(i, g)
    out[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = normalize(tile)
  return out


def _save(fig: Figure, path) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  FigureCanvasAgg(fig)  # Attaches itself to the figure; savefig renders with Agg.
  fig.savefig(path, dpi=_DPI, format="png")
  return path


# --- ZF Fig. 2 ----------------------------------------------------------------------------------


def top_activations_grid(tops: dict, path, *, max_maps: int = 8, title: str | None = None) -> str:
  """Zeiler & Fergus Fig. 2: per layer, per feature map, the projections of its top k units
  next to the image patches they come from.

  tops: layer name -> the dict of `research.interpret.deconvnet.top_activations`, in the
  order to draw (e.g. relu1..relu5); uses "projections" and "patches", both
  [F, k, rh, rw, C], "values" [F, k] when present, and "channels" [F] when present
  (to name the maps). One row per layer; for each of its first `max_maps` maps a
  ceil(sqrt(k))-square mosaic of projections and one of the matching patches.
  """
  fn = "top_activations_grid"
  if not isinstance(tops, dict) or not tops:
    raise ValueError(f"{fn}: tops must be a non-empty dict layer -> top_activations dict.")
  if int(max_maps) < 1:
    raise ValueError(f"{fn}: max_maps must be >= 1; received {max_maps}.")
  layers = []
  for name, top in tops.items():
    for key in ("projections", "patches"):
      if key not in top:
        raise ValueError(f"{fn}: tops[{name!r}] must have key {key!r}; received {list(top)}.")
    proj, patches = np.asarray(top["projections"]), np.asarray(top["patches"])
    for key, arr in (("projections", proj), ("patches", patches)):
      if arr.ndim != 5 or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
        raise _shape_error(
          fn, f"tops[{name!r}][{key!r}]", "[F, k, rh, rw, C], C = 1 or 3", arr.shape
        )
    if proj.shape != patches.shape:
      raise ValueError(
        f"{fn}: tops[{name!r}]: projections and patches must have the same shape; received "
        f"{proj.shape} and {patches.shape}."
      )
    values = top.get("values")
    if values is not None and np.shape(values) != proj.shape[:2]:
      raise _shape_error(
        fn, f"tops[{name!r}]['values']", f"[F, k] = {proj.shape[:2]}", np.shape(values)
      )
    channels = top.get("channels")
    if channels is not None and len(channels) != proj.shape[0]:
      raise ValueError(
        f"{fn}: tops[{name!r}]['channels'] must have F = {proj.shape[0]} entries; received "
        f"{len(channels)}."
      )
    layers.append((name, proj, patches, values, channels))

  m = min(int(max_maps), max(p.shape[0] for _, p, *_ in layers))
  # Per map: projections, patches, then a narrow spacer so that the pairs read as pairs.
  ratios = ([1.0, 1.0, 0.25] * m)[:-1]
  height = len(layers) * 1.45 + 0.35 + (0.35 if title else 0)  # inches; + note, + title
  fig = Figure(figsize=(sum(ratios) * 1.05 + 0.5, height))
  axes = fig.subplots(
    len(layers), len(ratios), squeeze=False, gridspec_kw={"wspace": 0.05, "width_ratios": ratios}
  )
  for a in axes.reshape(-1):
    _bare(a)
  for j in range(1, m):
    for a in axes[:, 3 * j - 1]:
      a.set_visible(False)
  for row, (name, proj, patches, values, channels) in enumerate(layers):
    for j in range(m):
      ax_proj, ax_patch = axes[row, 3 * j], axes[row, 3 * j + 1]
      if j >= proj.shape[0]:  # this layer has fewer maps than the widest one
        ax_proj.set_visible(False)
        ax_patch.set_visible(False)
        continue
      _show(ax_proj, _mosaic(proj[j], _signed))
      _show(ax_patch, _mosaic(patches[j], _minmax))
      label = f"map {int(channels[j])}" if channels is not None else f"map {j}"
      if values is not None:
        label += f", max {float(np.asarray(values)[j].max()):.3g}"
      ax_proj.set_title(label, fontsize=7, loc="left")
    axes[row, 0].set_ylabel(name, fontsize=10)
  fig.text(
    0.5,
    0.12 / height,
    "each pair: deconvnet projections of the top units (left), their image patches (right)",
    ha="center",
    fontsize=8,
  )
  if title:
    fig.suptitle(title)
  fig.subplots_adjust(
    left=0.4 / fig.get_figwidth(),
    right=1 - 0.1 / fig.get_figwidth(),
    bottom=0.35 / height,
    top=1 - (0.3 + (0.35 if title else 0)) / height,
    hspace=0.3,
  )
  return _save(fig, path)


# --- ZF Fig. 7 ----------------------------------------------------------------------------------


def _map_extent(rows: np.ndarray, cols: np.ndarray, patch: tuple[int, int]) -> tuple:
  """The imshow extent that puts each map cell at its occluder's centre r + ph/2, c + pw/2,
  each cell one stride wide (the patch size when there is a single position)."""
  ph, pw = patch
  dy = float(rows[1] - rows[0]) if len(rows) > 1 else float(ph)
  dx = float(cols[1] - cols[0]) if len(cols) > 1 else float(pw)
  y0, y1 = rows[0] + ph / 2 - dy / 2, rows[-1] + ph / 2 + dy / 2
  x0, x1 = cols[0] + pw / 2 - dx / 2, cols[-1] + pw / 2 + dx / 2
  return (x0, x1, y1, y0)


def _show_map(ax, values, extent, image_size, **kwargs):
  """Draws a map over the image's frame (x 0..W, y H..0) so that it aligns with the image."""
  im = ax.imshow(values, extent=extent, interpolation="nearest", **kwargs)
  ax.set_xlim(0, image_size[1])
  ax.set_ylim(image_size[0], 0)
  ax.set_aspect("equal")
  _bare(ax)
  for spine in ax.spines.values():  # the image's frame, which the map may not fill
    spine.set_visible(True)
    spine.set_edgecolor("0.6")
  return im


def _colour_bar(fig, ax, im) -> None:
  """A colour bar in an inset beside `ax`: unlike `colorbar(ax=...)` it leaves the panel's
  size alone, so all panels of a row stay the size of the image's."""
  cax = ax.inset_axes([1.03, 0.0, 0.05, 1.0])
  fig.colorbar(im, cax=cax).ax.tick_params(labelsize=6)


def _top_class_colours(top: np.ndarray, label: int, max_classes: int = 9):
  """Colour index per cell, colours and names' classes: the true class first, then by area;
  beyond `max_classes` the rest share one grey 'other'."""
  classes, counts = np.unique(top, return_counts=True)
  order = sorted(zip(classes.tolist(), counts.tolist()), key=lambda t: (t[0] != label, -t[1], t[0]))
  shown = [c for c, _ in order[:max_classes]]
  palette = colormaps["tab10"].colors
  colours = [palette[i % len(palette)] for i in range(len(shown))]
  index = np.full(top.shape, len(shown), np.int64)
  for i, c in enumerate(shown):
    index[top == c] = i
  other = len(order) > len(shown)
  if other:
    colours.append((0.6, 0.6, 0.6))
  return index, colours, shown, other


def occlusion_panels(
  images,
  maps_list,
  boxes,
  labels,
  path,
  *,
  patch,
  class_names=None,
  title: str | None = None,
) -> str:
  """Zeiler & Fergus Fig. 7: one row per image of its occlusion maps.

  images: [N, H, W, C]; maps_list: N dicts of `research.interpret.occlusion.occlusion`
  (probability [Ph, Pw], top_class [Ph, Pw], optional activation [Ph, Pw], rows [Ph],
  cols [Pw] the occluders' top-left corners); boxes: [N, 4] (x1, y1, x2, y2),
  pixel-edge, or None; labels: [N] correct classes; patch: the occluder size, int or
  (ph, pw), to place the cells at the occluders' centres; class_names: index -> name.

  Columns: (a) the image and its box, (b) the activation map when any dict has one,
  (d) the probability of the correct class (0..1), (e) the most probable class.
  """
  fn = "occlusion_panels"
  images = _images(images, fn)
  n, h, w, _ = images.shape
  if isinstance(maps_list, dict):
    raise ValueError(f"{fn}: maps_list must be a list of N = {n} occlusion dicts; received a dict.")
  maps_list = list(maps_list)
  _same_length(fn, "maps_list", maps_list, n)
  labels = _labels(labels, n, fn)
  boxes = _boxes(boxes, n, fn, "boxes")
  patch = _pair(patch, "patch", fn, positive=True)
  for i, maps in enumerate(maps_list):
    for key in ("probability", "top_class", "rows", "cols"):
      if key not in maps:
        raise ValueError(f"{fn}: maps_list[{i}] must have key {key!r}; received {list(maps)}.")
    for key in ("rows", "cols"):
      if np.ndim(maps[key]) != 1 or np.size(maps[key]) == 0:
        raise _shape_error(fn, f"maps_list[{i}][{key!r}]", "[P] with P > 0", np.shape(maps[key]))
    grid = (len(maps["rows"]), len(maps["cols"]))
    for key in ("probability", "top_class", "activation"):
      if key in maps and np.shape(maps[key]) != grid:
        raise _shape_error(
          fn, f"maps_list[{i}][{key!r}]", f"[Ph, Pw] = {grid} (rows, cols)", np.shape(maps[key])
        )

  with_act = any("activation" in maps for maps in maps_list)
  columns = (
    ["(a) image"]
    + (["(b) activation"] if with_act else [])
    + ["(d) p(true class)", "(e) top class"]
  )
  fig = Figure(figsize=(2.6 * len(columns) + 1.6, 2.5 * n + 0.3 + (0.3 if title else 0)))
  axes = fig.subplots(n, len(columns), squeeze=False)
  for i, maps in enumerate(maps_list):
    ax = iter(axes[i])
    rows, cols = np.asarray(maps["rows"]), np.asarray(maps["cols"])
    extent = _map_extent(rows, cols, patch)
    label = int(labels[i])

    a = next(ax)
    _show(a, _minmax(images[i]))
    if boxes is not None:
      _draw_box(a, boxes[i], _TRUE_COLOUR)
    _bare(a)
    a.set_ylabel(_class_name(label, class_names), fontsize=9)
    if with_act:
      a = next(ax)
      if "activation" in maps:
        im = _show_map(
          a, np.asarray(maps["activation"], np.float64), extent, (h, w), cmap="viridis"
        )
        _colour_bar(fig, a, im)
      else:
        _bare(a)
        a.text(0.5, 0.5, "no activation", ha="center", va="center", transform=a.transAxes)
    a = next(ax)
    im = _show_map(
      a, np.asarray(maps["probability"], np.float64), extent, (h, w), cmap="jet", vmin=0.0, vmax=1.0
    )
    _colour_bar(fig, a, im)
    a = next(ax)
    index, colours, shown, other = _top_class_colours(np.asarray(maps["top_class"]), label)
    _show_map(
      a, index, extent, (h, w), cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5
    )
    handles = [
      Patch(color=colours[j], label=_class_name(c, class_names) + (" (true)" if c == label else ""))
      for j, c in enumerate(shown)
    ]
    if other:
      handles.append(Patch(color=colours[-1], label="other"))
    a.legend(
      handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=6, frameon=False
    )
    if i == 0:
      for a, name in zip(axes[0], columns):
        a.set_title(name, fontsize=9)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


# --- Simonyan Fig. 1 ----------------------------------------------------------------------------


def class_models_grid(
  images, labels, path, *, class_names=None, ncols: int | None = None, title: str | None = None
) -> str:
  """Simonyan et al. Fig. 1: class model images [K, H, W, C], each titled by its class
  (labels [K] int; class_names: index -> name), ncols per row (default min(K, 4))."""
  fn = "class_models_grid"
  images = _images(images, fn)
  k = images.shape[0]
  labels = _labels(labels, k, fn)
  ncols = min(k, 4) if ncols is None else int(ncols)
  if ncols < 1:
    raise ValueError(f"{fn}: ncols must be >= 1; received {ncols}.")
  nrows = math.ceil(k / ncols)
  aspect = images.shape[1] / images.shape[2]
  fig = Figure(figsize=(2.2 * ncols, 2.2 * aspect * nrows + 0.4 + (0.3 if title else 0)))
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for i, a in enumerate(axes.reshape(-1)):
    _bare(a)
    if i >= k:
      a.set_visible(False)
      continue
    _show(a, _minmax(images[i]))
    a.set_title(_class_name(int(labels[i]), class_names), fontsize=9)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


# --- Simonyan Fig. 2 ----------------------------------------------------------------------------


def saliency_panels(
  images,
  saliency_maps,
  path,
  *,
  true_boxes=None,
  predicted_boxes=None,
  pairs_per_row: int | None = None,
  cmap: str = "gray",
  titles=None,
  title: str | None = None,
) -> str:
  """Simonyan et al. Fig. 2: image | saliency map pairs, `pairs_per_row` per row (default
  min(N, 3)).

  images: [N, H, W, C]; saliency_maps: [N, H, W] (e.g. `saliency_batch`); true_boxes,
  predicted_boxes: [N, 4] (x1, y1, x2, y2), pixel-edge, drawn on the image in green and
  red; titles: N strings over the images (e.g. class names).
  """
  fn = "saliency_panels"
  images = _images(images, fn)
  n, h, w, _ = images.shape
  maps = np.asarray(saliency_maps)
  if maps.ndim != 3:
    raise _shape_error(fn, "saliency_maps", "[N, H, W], one map per image", maps.shape)
  _same_length(fn, "saliency_maps", maps, n)
  if maps.shape[1:] != (h, w):
    raise _shape_error(fn, "saliency_maps", f"[N, H, W] = ({n}, {h}, {w}) as images", maps.shape)
  true_boxes = _boxes(true_boxes, n, fn, "true_boxes")
  predicted_boxes = _boxes(predicted_boxes, n, fn, "predicted_boxes")
  if titles is not None:
    _same_length(fn, "titles", titles, n)
  per_row = min(n, 3) if pairs_per_row is None else int(pairs_per_row)
  if per_row < 1:
    raise ValueError(f"{fn}: pairs_per_row must be >= 1; received {pairs_per_row}.")
  nrows = math.ceil(n / per_row)
  fig = Figure(figsize=(2 * 2 * per_row, 2 * (h / w) * nrows + 0.6 + (0.3 if title else 0)))
  axes = fig.subplots(nrows, 2 * per_row, squeeze=False)
  for a in axes.reshape(-1):
    _bare(a)
  for i in range(nrows * per_row):
    a_img, a_map = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
    if i >= n:
      a_img.set_visible(False)
      a_map.set_visible(False)
      continue
    _show(a_img, _minmax(images[i]))
    if true_boxes is not None:
      _draw_box(a_img, true_boxes[i], _TRUE_COLOUR, "true box" if i == 0 else None)
    if predicted_boxes is not None:
      _draw_box(a_img, predicted_boxes[i], _PREDICTED_COLOUR, "predicted box" if i == 0 else None)
    _show(a_map, _minmax(maps[i])[..., None], cmap=cmap)
    if titles is not None:
      a_img.set_title(str(titles[i]), fontsize=9)
    a_map.set_title("saliency", fontsize=9)
  if true_boxes is not None or predicted_boxes is not None:
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout(
    rect=(0, 0.06 if true_boxes is not None or predicted_boxes is not None else 0, 1, 1)
  )
  return _save(fig, path)


# --- ZF Fig. 5 ----------------------------------------------------------------------------------


def invariance_curves(curves: dict, path, *, title: str | None = None) -> str:
  """Zeiler & Fergus Fig. 5: the feature distance between a transformed image and the
  original against the amount of the transform.

  curves: transform name ("translation", "scale", "rotation") -> {"amounts": [T],
  "distances": {layer: [T]} (normalized Euclidean distance), optional "probability" [T]
  (of the true class)}. One column per transform, one line per layer; a second row of
  probabilities when any transform has them.
  """
  fn = "invariance_curves"
  if not isinstance(curves, dict) or not curves:
    raise ValueError(f"{fn}: curves must be a non-empty dict transform -> curve dict.")
  for name, curve in curves.items():
    for key in ("amounts", "distances"):
      if key not in curve:
        raise ValueError(f"{fn}: curves[{name!r}] must have key {key!r}; received {list(curve)}.")
    amounts = np.asarray(curve["amounts"])
    if amounts.ndim != 1 or amounts.size == 0:
      raise _shape_error(fn, f"curves[{name!r}]['amounts']", "[T] with T > 0", amounts.shape)
    t = amounts.shape[0]
    if not isinstance(curve["distances"], dict) or not curve["distances"]:
      raise ValueError(
        f"{fn}: curves[{name!r}]['distances'] must be a non-empty dict layer -> [T]."
      )
    series = {f"curves[{name!r}]['distances'][{k!r}]": v for k, v in curve["distances"].items()}
    if "probability" in curve:
      series[f"curves[{name!r}]['probability']"] = curve["probability"]
    for where, values in series.items():
      if np.shape(values) != (t,):
        raise _shape_error(fn, where, f"[T] = ({t},) as amounts", np.shape(values))

  with_prob = any("probability" in c for c in curves.values())
  nrows = 2 if with_prob else 1
  fig = Figure(figsize=(4 * len(curves), 3.2 * nrows + (0.3 if title else 0)))
  axes = fig.subplots(nrows, len(curves), squeeze=False)
  for j, (name, curve) in enumerate(curves.items()):
    amounts = np.asarray(curve["amounts"], np.float64)
    unit = _UNITS.get(name)
    xlabel = f"{name} ({unit})" if unit else name
    a = axes[0, j]
    for layer, values in curve["distances"].items():
      a.plot(amounts, np.asarray(values, np.float64), "o-", markersize=3, label=str(layer))
    a.set(title=name, xlabel=xlabel, ylabel="normalized distance")
    a.legend(fontsize=7)
    if with_prob:
      a = axes[1, j]
      if "probability" in curve:
        a.plot(amounts, np.asarray(curve["probability"], np.float64), "o-", markersize=3, color="k")
        a.set(xlabel=xlabel, ylabel="p(true class)", ylim=(-0.02, 1.02))
      else:
        a.set_visible(False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)
