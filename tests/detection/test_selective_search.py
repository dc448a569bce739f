"""Selective search: features, similarities, grouping, ranking, metrics, and recall against OpenCV."""

import itertools

import numpy as np
import pytest
from skimage import color

from research.detection import selective_search as ss
from research.detection.selective_search import features, felzenszwalb, grouping


def _rectangles() -> np.ndarray:
  """Grey 40x60 canvas with a red rectangle on columns 3..12, rows 4..15, a blue one on 20..40, 10..25."""
  image = np.full((40, 60, 3), 128, np.uint8)
  image[4:16, 3:13] = (220, 30, 30)
  image[10:26, 20:41] = (30, 30, 220)
  return image


@pytest.fixture(scope="module")
def scenes():
  """The first 12 digit_scenes/multi test scenes, generated as the builder stores them."""
  from research.data import digit_scenes  # pylint: disable=import-outside-toplevel

  images, labels, splits = digit_scenes.load_mnist5k()
  records = digit_scenes.generate(
    digit_scenes.CONFIGS["multi"], "test", images, labels, splits["test"]
  )
  return [
    (np.repeat(r["image"], 3, -1), r["boxes"][: r["num_objects"]])
    for _, r in itertools.islice(records, 12)
  ]


@pytest.mark.parametrize("mode", ["single", "fast", "quality"])
def test_rectangles_and_the_image_are_proposed_in_pixel_edges(mode):
  boxes = ss.selective_search(_rectangles(), mode=mode, workers=1)
  assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
  found = {tuple(b) for b in boxes.astype(int).tolist()}
  assert {(3, 4, 13, 16), (20, 10, 41, 26), (0, 0, 60, 40)} <= found
  assert len(found) == len(boxes)  # no duplicates
  assert (boxes == boxes.round()).all() and (boxes[:, :2] >= 0).all()
  assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2:] <= [60, 40]).all()


def test_same_seed_same_boxes_with_or_without_workers(scenes):
  image = scenes[0][0]
  inline = ss.selective_search(image, mode="fast", workers=1)
  try:
    np.testing.assert_array_equal(ss.selective_search(image, mode="fast", workers=2), inline)
  finally:
    ss._shutdown_pool()  # no idle workers for the rest of the session
  other = ss.selective_search(image, mode="fast", seed=1, workers=1)
  # The seed only reorders: the same boxes, ranked differently.
  assert not np.array_equal(other, inline)
  assert sorted(map(tuple, other.tolist())) == sorted(map(tuple, inline.tolist()))


class _Ones:
  """An rng whose random numbers are all 1: the ranking is then by position alone."""

  def random(self, n):
    return np.ones(n)


def test_rank_orders_by_hierarchy_position_and_keeps_first_duplicates():
  initial = np.array([[0, 0, 1, 1], [1, 0, 2, 1], [2, 0, 3, 1]])
  merged_a = np.array([[0, 0, 2, 1], [0, 0, 3, 1]])  # positions 2, 1
  merged_b = np.array([[1, 0, 3, 1], [0, 0, 3, 1]])  # positions 2, 1; the last is a duplicate
  out = ss.rank([(initial, [merged_a, merged_b])], _Ones())
  expected = [[0, 0, 3, 1], [0, 0, 2, 1], [1, 0, 3, 1], [0, 0, 1, 1], [1, 0, 2, 1], [2, 0, 3, 1]]
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == np.float32
  # Random numbers scale the positions: a zero sends an initial region to the top.
  rng = type("Rng", (), {"random": lambda self, n: np.r_[np.ones(n - 1), 0.0]})()
  np.testing.assert_array_equal(ss.rank([(initial, [merged_a])], rng)[0], [2, 0, 3, 1])


def test_similarities_on_hand_computed_values():
  assert grouping.intersection(np.array([0.5, 0.5, 0.0]), np.array([0.2, 0.3, 0.5])) == 0.5
  np.testing.assert_allclose(grouping.size_similarity(10.0, 30.0, 100.0), 0.6)
  # Side by side, the union box is exactly the two regions: fill 1.
  np.testing.assert_allclose(grouping.fill_similarity([0, 0, 2, 2], [2, 0, 4, 2], 4, 4, 100), 1.0)
  # Apart: the 5x5 union box holds 25 - 8 = 17 pixels of neither region.
  np.testing.assert_allclose(grouping.fill_similarity([0, 0, 2, 2], [3, 3, 5, 5], 4, 4, 100), 0.83)
  with pytest.raises(ValueError, match="measures must be distinct letters"):
    grouping.check_measures("CX")


def _strip(colour, sizes):
  """Regions 0-1-2-...: a 1-pixel-high strip of columns, `sizes` wide, neighbours in a row."""
  edges = np.cumsum([0, *sizes])
  n = len(sizes)
  return features.Regions(
    sizes=np.asarray(sizes, float),
    boxes=np.stack([edges[:-1], np.zeros(n), edges[1:], np.ones(n)], 1).astype(np.int64),
    pairs=np.stack([np.arange(n - 1), np.arange(1, n)], 1),
    colour=np.asarray(colour, float),
    texture=np.full((n, 2), 0.5),
    image_size=int(edges[-1]),
  )


def test_grouping_merges_the_most_similar_pair_and_averages_histograms():
  regions = _strip([[1.0, 0.0], [0.9, 0.1], [0.2, 0.8], [0.0, 1.0]], [1, 1, 1, 1])
  h = grouping.group(regions, "C")
  # (0, 1) at 0.9 -> 4 = [0.95, 0.05]; (2, 3) at 0.8 -> 5 = [0.1, 0.9]; then (4, 5) at 0.15.
  np.testing.assert_array_equal(h.children, [[0, 1], [2, 3], [4, 5]])
  np.testing.assert_allclose(h.similarity, [0.9, 0.8, 0.15])
  np.testing.assert_array_equal(h.boxes[4:], [[0, 0, 2, 1], [2, 0, 4, 1], [0, 0, 4, 1]])
  # With size: (0, 1) at 0 + 1 - 4/12 beats (1, 2) at 0.55 + 1 - 11/12. The merged histogram
  # is size-weighted, 1 x [1, 0, 0] + 3 x [0, 1, 0] -> [0.25, 0.75, 0], so it meets region 2
  # in 0.05 + 0.55 (an unweighted mean would give 0.05 + 0.5).
  h = grouping.group(_strip([[1, 0, 0], [0, 1, 0], [0.05, 0.55, 0.4]], [1, 3, 8]), "CS")
  np.testing.assert_array_equal(h.children, [[0, 1], [2, 3]])
  np.testing.assert_allclose(h.similarity, [2 / 3, 0.6])


def test_size_similarity_merges_small_regions_first():
  h = grouping.group(_strip(np.full((4, 2), 0.5), [5, 1, 1, 5]), "S")
  np.testing.assert_array_equal(h.children[0], [1, 2])
  np.testing.assert_allclose(h.similarity[0], 1 - 2 / 12)


def test_regions_sizes_boxes_neighbours_and_histograms():
  labels = np.array([[0, 1, 1, 3], [1, 2, 2, 3], [1, 2, 2, 3]])
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
  r = features.regions(labels, features.pixel_codes(image, "hsv"))
  np.testing.assert_array_equal(r.sizes, [1, 4, 4, 3])
  np.testing.assert_array_equal(r.boxes, [[0, 0, 1, 1], [0, 0, 3, 3], [1, 1, 3, 3], [3, 0, 4, 3]])
  # 0 and 2 touch only at a corner: 8-connected neighbours, like the segmentation's graph.
  np.testing.assert_array_equal(r.pairs, [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]])
  assert r.image_size == 12
  np.testing.assert_allclose(r.colour.sum(1), 1)
  np.testing.assert_allclose(r.texture.sum(1), 1)
  # Region 0 is one pixel: its colour histogram holds 1/3 in that pixel's bin of each channel.
  hsv = color.rgb2hsv(image[:1, :1])[0, 0]
  bins = np.minimum((hsv * 25).astype(int), 24) + [0, 25, 50]
  np.testing.assert_array_equal(np.nonzero(r.colour[0])[0], bins)
  np.testing.assert_allclose(r.colour[0, bins], 1 / 3)


def test_texture_histograms_match_a_dense_count():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  labels = (np.arange(20)[:, None] // 7) * 4 + np.arange(24)[None, :] // 6
  codes = features.pixel_codes(image, "lab")
  sizes = np.bincount(labels.ravel()).astype(float)
  got = features.texture_histograms(labels.ravel(), sizes, codes)
  grad = features.oriented_gradients(features.colour_space(image, "lab")).reshape(20 * 24, 24)
  bins = np.minimum((grad * (10 / 0.43)).astype(int), 9)
  for region in range(labels.max() + 1):
    rows = bins[labels.ravel() == region]
    dense = np.stack([np.bincount(rows[:, m], minlength=10) for m in range(24)]).ravel()
    np.testing.assert_allclose(got[region], dense / dense.sum())


def test_hsv_matches_scikit_image():
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (50, 50, 3)) / 255
  rgb[:5] = 0.5  # grey
  rgb[5:10, :, 1] = rgb[5:10, :, 0]  # ties for the maximum
  np.testing.assert_allclose(features.rgb_to_hsv(rgb), color.rgb2hsv(rgb), atol=1e-12)


@pytest.mark.parametrize("colour_space", ["hsv", "lab", "i"])
def test_felzenszwalb_labels_equal_scikit_image_for_every_k(colour_space):
  from skimage.data import astronaut  # pylint: disable=import-outside-toplevel
  from skimage.segmentation import felzenszwalb as reference  # pylint: disable=import-outside-toplevel

  image = astronaut()[::4, ::3]  # 128 x 171: flat sky, edges and texture, ties in the weights
  channels = features.colour_space(image, colour_space)
  graph = felzenszwalb.Graph.of(channels)
  h, w = image.shape[:2]
  assert graph.costs.shape == (4 * h * w - 3 * (h + w) + 2,)
  for k, min_size in ((50, 10), (100, 20), (300, 1)):
    expected = reference(channels, scale=k, sigma=0.8, min_size=min_size, channel_axis=-1)
    np.testing.assert_array_equal(graph.segment(k, min_size), expected)


def test_default_call_runs_in_a_script_read_from_stdin(tmp_path):
  # No `if __name__ == "__main__":` guard, the script on stdin: what a tutorial's first line does.
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  script = (
    "import numpy as np\n"
    "from research.detection.selective_search import selective_search\n"
    "image = np.zeros((40, 60, 3), np.uint8); image[4:16, 3:13] = 200\n"
    "print(len(selective_search(image)))\n"
  )
  out = subprocess.run(
    [sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path, timeout=300
  )
  assert out.returncode == 0, out.stderr
  assert int(out.stdout) >= 2


def test_min_size_is_k_on_voc_sized_images_and_shrinks_below():
  assert features.min_size(100, 375, 500) == features.min_size(100, 600, 800) == 100
  assert features.min_size(100, 128, 128) == round(100 * np.sqrt(128 * 128 / (500 * 375)))


def test_recall_and_mabo_hand_cases():
  proposals = np.array([[0, 0, 10, 10]], float)
  gt = np.array([[0, 0, 10, 10], [0, 0, 20, 10], [30, 30, 40, 40]], float)  # IoU 1, 0.5, 0
  assert ss.recall(proposals, gt) == pytest.approx(2 / 3)
  assert ss.recall(proposals, gt, threshold=0.6) == pytest.approx(1 / 3)
  assert ss.mabo(proposals, gt) == pytest.approx(0.5)
  # Per class (the paper's MABO): class 0 averages 1, class 1 averages (0.5 + 0) / 2.
  assert ss.mabo(proposals, gt, classes=[0, 1, 1]) == pytest.approx(0.625)
  # A data set: per-image lists, pooled over all gt boxes; an image without proposals scores 0.
  images = [proposals, np.zeros((0, 4))]
  gts = [gt[:2], gt[2:]]
  assert ss.recall(images, gts) == pytest.approx(2 / 3)
  assert ss.mabo(images, gts, classes=[[0, 1], [1]]) == pytest.approx(0.625)
  with pytest.raises(ValueError, match="gt_boxes: expected boxes of positive area"):
    ss.recall(proposals, np.zeros((2, 4)))  # padding rows
  with pytest.raises(ValueError, match="proposals: expected one entry per image"):
    ss.recall([proposals], gts)
  with pytest.raises(ValueError, match="classes: expected one label per gt box"):
    ss.mabo(proposals, gt, classes=[0, 1])


def test_recall_on_digit_scenes_at_least_opencv(scenes):
  gt = [boxes for _, boxes in scenes]
  ours = [ss.selective_search(image, mode="fast", workers=1) for image, _ in scenes]
  ours_recall = ss.recall(ours, gt)
  assert ours_recall >= 0.95  # measured 0.971
  cv2 = pytest.importorskip("cv2")
  theirs = []
  for image, _ in scenes:
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))
    search.switchToSelectiveSearchFast()
    xywh = search.process().reshape(-1, 4).astype(np.float32)
    theirs.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
  assert ours_recall >= ss.recall(theirs, gt)  # measured 0.914


@pytest.mark.parametrize(
  "image, message",
  [
    (np.zeros((8, 8), np.uint8), r"\[H, W, 3\].*shape \(8, 8\); stack a greyscale"),
    (np.zeros((8, 8, 1), np.uint8), r"shape \(8, 8, 1\); stack a greyscale"),
    (np.zeros((8, 8, 4), np.uint8), r"got uint8 of shape \(8, 8, 4\)"),
    (np.zeros((8, 8, 3), np.float32), r"got float32 of shape \(8, 8, 3\); convert floats"),
    (np.zeros((0, 8, 3), np.uint8), r"H, W >= 1, got uint8 of shape \(0, 8, 3\)"),
  ],
)
def test_bad_images_raise(image, message):
  with pytest.raises(ValueError, match="selective_search: image must be an RGB image.*" + message):
    ss.selective_search(image, mode="fast")


def test_bad_arguments_raise():
  image = _rectangles()
  with pytest.raises(
    ValueError, match=r"mode must be one of \['fast', 'quality', 'single'\], got 'slow'"
  ):
    ss.selective_search(image, mode="slow")
  with pytest.raises(ValueError, match="workers must be a positive int or None, got 0"):
    ss.selective_search(image, mode="fast", workers=0)
  with pytest.raises(ValueError, match="seed must be an int or None, got 0.5"):
    ss.selective_search(image, mode="fast", seed=0.5)
