"""PASCAL VOC's segmentation masks read from a VOCdevkit directory, and SBD's extra ones.

The VOC layout, under `root` (e.g. VOCdevkit/VOC2012):
  JPEGImages/<id>.jpg               the images
  SegmentationClass/<id>.png        palette ("P") PNGs whose indices are the class ids 0..20,
                                    255 on object boundaries and "difficult" regions;
                                    RGB PNGs in VOC's colours (`colour_map`) are read too
  ImageSets/Segmentation/<name>.txt one id per line: train, val, trainval

SBD (Hariharan et al., "Semantic contours from inverse detectors"), under `sbd_root`
(benchmark_RELEASE/dataset):
  cls/<id>.mat                      MATLAB struct GTcls, field Segmentation: the class map
  train.txt, val.txt                one id per line (train: 8,498 images, val: 2,857)
  img/<id>.jpg                      the images; without img/, root's JPEGImages/<id>.jpg

A split is named by an expression:
  "train", "val", "trainval"        VOC's ImageSets/Segmentation/<name>.txt
  "sbd:train", "sbd:val"            SBD's <name>.txt, masks from cls/*.mat
  "A-B"                             the ids of A that are not in B, read as A says
The FCN paper trains on "sbd:train" and validates on VOC 2011's "val-sbd:train" (736
images; root VOCdevkit/VOC2011).

`VocSegmentation(root, split, sbd_root=...)` is a random-access source (len, __getitem__)
of records {"image": uint8 [H, W, 3], "labels": uint8 [H, W]} (research.data.segmentation's
schema), read lazily. A missing directory, split file or file of an id raises
FileNotFoundError naming the path when the source is made; a mask that is not a class map
of VOC's 21 classes (a PNG neither "P" nor "RGB", a palette colour or RGB colour that is not
VOC's, an index other than 0..20 and 255) or whose size differs from its image raises
ValueError naming the file when its record is read.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

NAME = "voc_segmentation"
IGNORE = 255  # research.data.segmentation.IGNORE
CLASS_NAMES = (
  "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
  "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
  "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 21
SBD_PREFIX = "sbd:"


def colour_map() -> np.ndarray:
  """uint8 [256, 3]: VOC's colour of each index, the bits of the id spread over red, green
  and blue (bit 0 -> red's bit 7, bit 1 -> green's, bit 2 -> blue's, bit 3 -> red's bit 6,
  ...): 0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192) as in VOC's own PNGs."""
  colours = np.zeros((256, 3), np.uint8)
  for k in range(256):
    c, rgb = k, [0, 0, 0]
    for j in range(8):
      for channel in range(3):
        rgb[channel] |= ((c >> channel) & 1) << (7 - j)
      c >>= 3
    colours[k] = rgb
  return colours


COLOURS = colour_map()
VALID = (*range(NUM_CLASSES), IGNORE)  # the indices a mask may hold
_EXPECTED = f"a class id 0..{NUM_CLASSES - 1} or {IGNORE} (boundary, ignored)"


def _where(mask: np.ndarray) -> str:
  y, x = np.unravel_index(int(np.argmax(mask)), mask.shape)
  return f"at pixel (y, x) = ({y}, {x}) ({int(mask.sum())} such pixels)"


def _check_ids(labels: np.ndarray, path: str) -> np.ndarray:
  """labels [H, W] as uint8, or ValueError naming `path` and the first id outside VALID."""
  bad = ~np.isin(labels, VALID)
  if bad.any():
    value = labels[np.unravel_index(int(np.argmax(bad)), bad.shape)]
    raise ValueError(f"{path}: index {value} {_where(bad)}; expected {_EXPECTED}.")
  return labels.astype(np.uint8)


def _from_palette(image: Image.Image, path: str) -> np.ndarray:
  """A "P" PNG -> its indices [H, W], each present one checked against VOC's colour."""
  indices = _check_ids(np.asarray(image), path)
  palette = np.asarray(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
  for k in np.flatnonzero(np.bincount(indices.ravel(), minlength=256)):
    colour = tuple(int(v) for v in palette[k]) if k < len(palette) else None
    if colour != tuple(int(v) for v in COLOURS[k]):
      name = CLASS_NAMES[k] if k < NUM_CLASSES else "boundary"
      raise ValueError(
        f"{path}: palette PNG with an unknown colour: index {k} {_where(indices == k)} has "
        f"colour {colour if colour else 'none (the palette is shorter)'}; expected VOC's "
        f"{tuple(int(v) for v in COLOURS[k])} for class id {k} ({name})."
      )
  return indices


def _from_rgb(rgb: np.ndarray, path: str) -> np.ndarray:
  """An RGB mask [H, W, 3] in VOC's colours -> class ids [H, W] (the colour map inverted)."""
  codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
  known = {(int(r) << 16) | (int(g) << 8) | int(b): k for k, (r, g, b) in enumerate(COLOURS)}
  unique, inverse = np.unique(codes, return_inverse=True)
  ids = np.empty(len(unique), np.uint8)
  for i, code in enumerate(unique):
    k = known.get(int(code))
    if k not in VALID:
      colour = (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255)
      expected = ", ".join(f"{tuple(int(v) for v in COLOURS[k])} {k}" for k in VALID)
      raise ValueError(
        f"{path}: RGB mask with an unknown colour {colour} {_where(codes == code)}; expected "
        f"one of VOC's colours (colour id): {expected}."
      )
    ids[i] = k
  return ids[inverse.reshape(codes.shape)]


def read_png_mask(path: str) -> np.ndarray:
  """uint8 [H, W] class ids of a SegmentationClass PNG ("P" indices, or "RGB" colours)."""
  with Image.open(path) as image:
    if image.mode == "P":
      return _from_palette(image, path)
    if image.mode == "RGB":
      return _from_rgb(np.asarray(image), path)
    raise ValueError(
      f"{path}: a {image.mode!r} PNG; expected a palette ('P') PNG whose indices are VOC's "
      f"class ids (as VOC's SegmentationClass), or an 'RGB' PNG in VOC's colours."
    )


def read_sbd_mask(path: str) -> np.ndarray:
  """uint8 [H, W] class ids of an SBD cls/<id>.mat (GTcls.Segmentation)."""
  import scipy.io  # pylint: disable=import-outside-toplevel

  try:
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
  except (ValueError, TypeError, NotImplementedError) as e:
    raise ValueError(f"{path}: not a MATLAB file scipy.io.loadmat reads ({e}).") from e
  labels = getattr(mat.get("GTcls"), "Segmentation", None)
  labels = None if labels is None else np.asarray(labels)
  if labels is None or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    found = sorted(k for k in mat if not k.startswith("__"))
    raise ValueError(
      f"{path}: expected SBD's struct GTcls whose field Segmentation is an integer class map "
      f"[H, W]; received variables {found}"
      + ("" if labels is None else f", GTcls.Segmentation {labels.dtype} {labels.shape}")
      + "."
    )
  return _check_ids(labels, path)


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of a JPEG (grey ones repeated to RGB)."""
  with Image.open(path) as image:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def read_record(image_path: str, mask_path: str) -> dict:
  """{"image": uint8 [H, W, 3], "labels": uint8 [H, W]} of one image and its mask (.png or
  SBD .mat); ValueError naming both files when their sizes differ."""
  image = read_image(image_path)
  read = read_sbd_mask if mask_path.endswith(".mat") else read_png_mask
  labels = read(mask_path)
  if labels.shape != image.shape[:2]:
    raise ValueError(
      f"{mask_path}: mask of {labels.shape[0]}x{labels.shape[1]} (HxW) but its image "
      f"{image_path} is {image.shape[0]}x{image.shape[1]}; expected the same size."
    )
  return {"image": image, "labels": labels}


def _directory(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory; expected {what}.")
  return path


def read_ids(path: str) -> list[str]:
  """The ids of a split file, one per line (blank lines skipped)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such split file; expected one image id per line.")
  with open(path, encoding="utf-8") as f:
    lines = [(n, line.strip()) for n, line in enumerate(f, 1)]
  for n, line in lines:
    if len(line.split()) > 1:
      raise ValueError(f"{path}, line {n}: {line!r}; expected one image id per line.")
  ids = [line for _, line in lines if line]
  if not ids:
    raise ValueError(f"{path}: no image ids; expected one per line.")
  return ids


class VocSegmentation:
  """Records of `split` (an expression, see the module) of VOC under `root` and SBD under
  `sbd_root`: {"image": uint8 [H, W, 3], "labels": uint8 [H, W]}, read lazily. `ids`: the
  image ids by index; `files`: (image path, mask path) by index."""

  class_names = CLASS_NAMES
  num_classes = NUM_CLASSES

  def __init__(self, root: str, split: str = "train", *, sbd_root: str | None = None):
    self.root, self.split, self.sbd_root = root, split, sbd_root
    expected = "a VOC directory (VOCdevkit/VOC2012) with JPEGImages/ and SegmentationClass/"
    _directory(root, expected)
    self.ids, self.files = self._resolve(split)

  def _list(self, name: str) -> tuple[str, list[str]]:
    """(split file, its ids) of a split name ("val", "sbd:train")."""
    if name.startswith(SBD_PREFIX):
      if not self.sbd_root:
        raise ValueError(
          f"split {self.split!r}: {name!r} reads SBD; set sbd_root (config.data.sbd_root) to "
          "SBD's dataset directory (benchmark_RELEASE/dataset, with cls/ and train.txt)."
        )
      _directory(self.sbd_root, "SBD's dataset directory with cls/, train.txt and val.txt")
      path = os.path.join(self.sbd_root, f"{name[len(SBD_PREFIX) :]}.txt")
    else:
      path = os.path.join(self.root, "ImageSets", "Segmentation", f"{name}.txt")
    return path, read_ids(path)

  def _resolve(self, split: str):
    name, minus, rest = split.partition("-")
    if not name or (minus and not rest):
      raise ValueError(
        f"split: expected a VOC split ('train', 'val'), an SBD one ('sbd:train') or 'A-B' "
        f"(the ids of A not in B); received {split!r}."
      )
    list_file, ids = self._list(name)
    if minus:
      dropped = set(self._list(rest)[1])
      ids = [i for i in ids if i not in dropped]
    if name.startswith(SBD_PREFIX):
      masks, suffix = _directory(os.path.join(self.sbd_root, "cls"), "SBD's cls/<id>.mat"), ".mat"
      images = os.path.join(self.sbd_root, "img")
      images = images if os.path.isdir(images) else os.path.join(self.root, "JPEGImages")
    else:
      masks = os.path.join(self.root, "SegmentationClass")
      _directory(masks, "VOC's SegmentationClass/<id>.png masks")
      images, suffix = os.path.join(self.root, "JPEGImages"), ".png"
    _directory(images, "the images <id>.jpg")
    files = [(os.path.join(images, f"{i}.jpg"), os.path.join(masks, f"{i}{suffix}")) for i in ids]
    for directory, column, what in ((images, 0, "image"), (masks, 1, "mask")):
      present = set(os.listdir(directory))
      missing = [f[column] for f in files if os.path.basename(f[column]) not in present]
      if missing:
        raise FileNotFoundError(
          f"{missing[0]}: no such file; expected the {what} of every id in {list_file} "
          f"({len(missing)} of {len(files)} missing)."
        )
    return ids, files

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index: int) -> dict:
    return read_record(*self.files[index])
