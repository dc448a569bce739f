"""A user's own detection data set in COCO format: one annotation JSON plus a folder of images.

    source = CocoFormat("annotations/instances_train.json", "images/train")
    len(source), source[0], source.class_names

The JSON holds "images" ({"id", "file_name", "width", "height"}), "categories"
({"id", "name"}) and "annotations" ({"id", "image_id", "category_id", "bbox":
[x, y, w, h] in pixels, optional "iscrowd", and "segmentation" as polygons or
RLE when masks are read}). Records are in the schema of research.data.detection
(so `DetectionTransform` batches them), images by increasing id, objects in
file order. Category ids, which need not be contiguous (COCO's run 1..90 with
gaps), map to labels 0..K-1 in order of id.

Every entry is checked when the source is made, so a malformed file fails at
once with a ValueError naming the annotation or image id and what is wrong (a
box of zero or negative width or height, or entirely outside its image, among
them: unlike research.data.detection.from_coco, nothing is dropped); a
missing image file raises FileNotFoundError naming the image id and file name.
Images without annotations are valid: their boxes are [0, 4].
"""

from __future__ import annotations

import json
import math
import numbers
import os

import numpy as np
from PIL import Image

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _entries(data: dict, key: str, path: str, *, required: bool = True) -> list:
  if key not in data:
    if required:
      raise ValueError(f"coco_format: {path} has no {key!r} list.")
    return []
  if not isinstance(data[key], list):
    raise ValueError(f"coco_format: {path}: {key!r} must be a list; received {type(data[key])}.")
  return data[key]


def _check_keys(entry, keys, what: str):
  if not isinstance(entry, dict):
    raise ValueError(f"coco_format: {what} must be a JSON object; received {entry!r:.80}.")
  missing = [k for k in keys if k not in entry]
  if missing:
    raise ValueError(f"coco_format: {what} has no {missing[0]!r} key (keys: {sorted(entry)}).")


def _check_segmentation(seg, what: str, height: int, width: int):
  """Polygons [[x, y, x, y, ...], ...] (3+ points each) or RLE {"counts", "size": [H, W]}."""
  if isinstance(seg, list):
    for poly in seg:
      if not (
        isinstance(poly, list)
        and len(poly) >= 6
        and len(poly) % 2 == 0
        and all(map(_is_number, poly))
      ):
        raise ValueError(
          f"coco_format: {what}: a segmentation polygon must be a list of 3 or more x, y pairs "
          f"of finite numbers; received {poly!r:.80}."
        )
    if not seg:
      raise ValueError(f"coco_format: {what}: segmentation has no polygons.")
    return
  if isinstance(seg, dict) and "counts" in seg and "size" in seg:
    if list(seg["size"]) != [height, width]:
      raise ValueError(
        f"coco_format: {what}: RLE size {seg['size']} differs from the image's [height, width] "
        f"[{height}, {width}]."
      )
    if not isinstance(seg["counts"], (str, list)):
      raise ValueError(f"coco_format: {what}: RLE counts must be a string or a list of ints.")
    return
  raise ValueError(
    f"coco_format: {what}: segmentation must be a list of polygons or an RLE dict with 'counts' "
    f"and 'size'; received {seg!r:.80}."
  )


class CocoFormat:
  """Random-access records {"image": uint8 [H, W, C], "boxes": float32 [G, 4] (x1, y1, x2, y2),
  "labels": int32 [G], "crowd": bool [G], "image_id": int64, and with masks=True
  "masks": uint8 [G, H, W]} of a COCO-format data set.

  Args:
    annotation_file: the JSON file.
    image_dir: the folder that images' "file_name"s are relative to.
    masks: read every annotation's "segmentation" into "masks" (needs pycocotools).
    channels: 3 converts every image to RGB, 1 to grey, None keeps the file's.
    check_images: look for every image file now, so a missing one fails before training.

  Attributes: class_names (tuple, by label), category_ids (tuple: label -> the
  file's category id), labels_by_category (dict: category id -> label),
  image_ids (tuple, record order), num_classes.
  """

  def __init__(
    self,
    annotation_file: str,
    image_dir: str,
    *,
    masks: bool = False,
    channels: int | None = 3,
    check_images: bool = True,
  ):
    if not os.path.isfile(annotation_file):
      raise FileNotFoundError(f"coco_format: annotation file {annotation_file!r} does not exist.")
    if channels not in (None, 1, 3):
      raise ValueError(f"coco_format: channels must be 1, 3 or None; received {channels!r}.")
    with open(annotation_file, encoding="utf-8") as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"coco_format: {annotation_file} is not valid JSON: {e}.") from e
    if not isinstance(data, dict):
      raise ValueError(f"coco_format: {annotation_file} must hold a JSON object at the top level.")
    self.image_dir, self.masks, self.channels = image_dir, masks, channels

    categories = {}
    for k, c in enumerate(_entries(data, "categories", annotation_file)):
      _check_keys(c, ("id", "name"), f"category #{k}")
      if not isinstance(c["id"], int) or c["id"] in categories:
        raise ValueError(f"coco_format: category #{k}: id {c['id']!r} is not a new integer.")
      categories[c["id"]] = str(c["name"])
    self.category_ids = tuple(sorted(categories))
    self.class_names = tuple(categories[i] for i in self.category_ids)
    self.labels_by_category = {c: label for label, c in enumerate(self.category_ids)}

    self._images = {}
    for k, im in enumerate(_entries(data, "images", annotation_file)):
      _check_keys(im, _IMAGE_KEYS, f"image #{k}")
      what = f"image id {im['id']!r}"
      if not isinstance(im["id"], int) or im["id"] in self._images:
        raise ValueError(f"coco_format: {what} (image #{k}) is not a new integer id.")
      if not all(isinstance(im[d], int) and im[d] > 0 for d in ("width", "height")):
        raise ValueError(
          f"coco_format: {what}: width and height must be positive integers; received "
          f"{im['width']!r}, {im['height']!r}."
        )
      self._images[im["id"]] = im
    self.image_ids = tuple(sorted(self._images))

    self._objects = {i: [] for i in self.image_ids}
    for k, a in enumerate(_entries(data, "annotations", annotation_file, required=False)):
      self._objects[self._check_annotation(a, k)].append(a)
    if check_images:
      for i in self.image_ids:
        self._path(i)

  @property
  def num_classes(self) -> int:
    return len(self.category_ids)

  def _check_annotation(self, a, k: int) -> int:
    """Validates annotation #k of the file; returns its image id."""
    _check_keys(
      a, _ANNOTATION_KEYS, f"annotation #{k}" + (f" (id {a['id']!r})" if "id" in a else "")
    )
    what = f"annotation id {a['id']!r} (image id {a['image_id']!r})"
    if a["image_id"] not in self._images:
      raise ValueError(f"coco_format: {what}: image_id {a['image_id']!r} is not among the images.")
    if a["category_id"] not in self.labels_by_category:
      raise ValueError(
        f"coco_format: {what}: category_id {a['category_id']!r} is not among the categories "
        f"{list(self.category_ids)[:20]}."
      )
    bbox = a["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
      raise ValueError(
        f"coco_format: {what}: bbox must be 4 finite numbers [x, y, width, height]; received "
        f"{bbox!r:.80}."
      )
    if bbox[2] <= 0 or bbox[3] <= 0:
      raise ValueError(
        f"coco_format: {what}: bbox [x, y, width, height] = {bbox} has a zero or negative "
        f"{'width' if bbox[2] <= 0 else 'height'}; expected both positive."
      )
    im = self._images[a["image_id"]]
    x, y, w, h = bbox
    if x >= im["width"] or y >= im["height"] or x + w <= 0 or y + h <= 0:
      raise ValueError(
        f"coco_format: {what}: bbox [x, y, width, height] = {bbox} lies entirely outside the "
        f"image's {im['width']}x{im['height']} (width x height); expected part of it inside."
      )
    if a.get("iscrowd", 0) not in (0, 1):
      raise ValueError(f"coco_format: {what}: iscrowd must be 0 or 1; received {a['iscrowd']!r}.")
    if self.masks:
      if "segmentation" not in a:
        raise ValueError(f"coco_format: {what}: has no 'segmentation', and masks=True.")
      _check_segmentation(a["segmentation"], what, im["height"], im["width"])
    return a["image_id"]

  def _path(self, image_id: int) -> str:
    name = self._images[image_id]["file_name"]
    path = os.path.join(self.image_dir, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"coco_format: image id {image_id} file_name {name!r} not found at {path!r}."
      )
    return path

  def __len__(self) -> int:
    return len(self.image_ids)

  def __getitem__(self, index: int) -> dict:
    image_id = self.image_ids[index]
    info = self._images[image_id]
    with Image.open(self._path(image_id)) as pil:
      if self.channels is not None:
        pil = pil.convert("RGB" if self.channels == 3 else "L")
      image = np.asarray(pil)
    if image.ndim == 2:
      image = image[..., None]
    if image.dtype != np.uint8:
      raise ValueError(
        f"coco_format: image id {image_id} ({info['file_name']!r}) decodes to {image.dtype}; "
        "expected 8-bit pixels (pass channels=1 or 3 to convert)."
      )
    if image.shape[:2] != (info["height"], info["width"]):
      raise ValueError(
        f"coco_format: image id {image_id} ({info['file_name']!r}) is {image.shape[1]}x"
        f"{image.shape[0]} (width x height); the annotation file says {info['width']}x"
        f"{info['height']}."
      )
    objects = self._objects[image_id]
    xywh = np.array([a["bbox"] for a in objects], np.float32).reshape(-1, 4)
    record = {
      "image": image,
      "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
      "labels": np.array([self.labels_by_category[a["category_id"]] for a in objects], np.int32),
      "crowd": np.array([bool(a.get("iscrowd", 0)) for a in objects], bool),
      "image_id": np.int64(image_id),
    }
    if self.masks:
      h, w = image.shape[:2]
      record["masks"] = np.zeros((len(objects), h, w), np.uint8)
      for k, a in enumerate(objects):
        record["masks"][k] = _decode(a, h, w)
    return record


def _decode(annotation: dict, height: int, width: int) -> np.ndarray:
  """An annotation's segmentation (polygons, RLE with counts as list or string) -> uint8 [H, W]."""
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel

  seg = annotation["segmentation"]
  try:
    if isinstance(seg, list):
      rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
      rle = mask_utils.frPyObjects(seg, height, width)
    else:
      rle = seg
    return mask_utils.decode(rle).astype(np.uint8)
  except Exception as e:  # pycocotools raises bare Exceptions on malformed counts
    raise ValueError(
      f"coco_format: annotation id {annotation['id']!r} (image id {annotation['image_id']!r}): "
      f"cannot decode its segmentation: {e}"
    ) from e
