"""config.init: weights from another run's workdir or a torchvision state_dict, into the
whole model or a sub-tree; what is loaded, left fresh and ignored; clear errors."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research.models.lenet import LeNet5
from research.train import init, loop


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
  """A 20-step LeNet-5 run on mnist5k: (workdir, its final params)."""
  from experiments import lenet5_mnist  # pylint: disable=import-outside-toplevel

  c = lenet5_mnist.get_config()
  c.total_steps, c.log_every_steps, c.eval_every_steps = 20, 10, 0
  c.checkpoint_every_steps, c.batch_size, c.eval_batch_size = 20, 32, 500
  workdir = str(tmp_path_factory.mktemp("lenet_source"))
  loop.train_and_evaluate(c, workdir)
  with ocp.CheckpointManager(f"{workdir}/checkpoints") as m:
    state = m.restore(20, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return workdir, jax.device_get(state["params"])


def _fresh(model, shape=(1, 32, 32, 1)):
  variables = model.init(jax.random.PRNGKey(1), jnp.zeros(shape), train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_whole_model_from_a_workdir_and_the_head_left_fresh(lenet_run, caplog):
  workdir, trained = lenet_run
  fresh = _fresh(LeNet5())
  variables, report = init.load(workdir, fresh)
  assert _equal(variables["params"], trained)
  assert report["fresh"] == [] and len(report["loaded"]) == 10
  with caplog.at_level(logging.INFO, logger="research.train.init"):
    variables, report = init.load({"path": workdir, "exclude": ("^fc2/",)}, fresh)
  assert _equal(variables["params"]["fc2"], fresh["params"]["fc2"])
  assert _equal(variables["params"]["conv1"], trained["conv1"])
  assert report["fresh"] == ["fc2/bias", "fc2/kernel"]
  assert "loaded 8 arrays" in caplog.text and "fc2/bias" in caplog.text


class _Detector(nn.Module):
  """A backbone sub-tree and a new head, as the detectors will have."""

  @nn.compact
  def __call__(self, x, *, train=False):
    _, out = LeNet5(name="backbone")(x, train=train)
    return nn.Dense(4, name="head")(out["pre_logits"]), out


def test_a_sub_tree_from_a_workdir_and_prefixes(lenet_run):
  workdir, trained = lenet_run
  fresh = _fresh(_Detector())
  variables, report = init.load({"path": workdir, "target_prefix": "backbone"}, fresh)
  assert _equal(variables["params"]["backbone"], trained)
  assert _equal(variables["params"]["head"], fresh["params"]["head"])
  assert report["fresh"] == ["head/bias", "head/kernel"]


def test_a_source_sub_tree_into_a_whole_model(lenet_run, tmp_path):
  """A detector run's backbone back into a classifier: source_prefix picks the sub-tree."""
  workdir, trained = lenet_run
  model = _Detector()
  variables, _ = init.load({"path": workdir, "target_prefix": "backbone"}, _fresh(model))
  from research.train.checkpoints import Checkpointer  # pylint: disable=import-outside-toplevel
  from research.train.state import TrainState  # pylint: disable=import-outside-toplevel

  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats={},
    opt_state={},
    rng=jax.random.PRNGKey(0),
    tx=None,
  )
  saver = Checkpointer(str(tmp_path / "checkpoints"))
  saver.save(1, state, {})
  saver.close()
  got, report = init.load({"path": str(tmp_path), "source_prefix": "backbone"}, _fresh(LeNet5()))
  assert _equal(got["params"], trained)
  assert report["ignored"] == []  # the head lies outside the source prefix: not read


def test_shape_mismatch_names_the_parameter_and_both_shapes(lenet_run):
  workdir, _ = lenet_run
  with pytest.raises(
    ValueError, match=r"params/fc2/kernel: the model has \(84, 5\), the source \(84, 10\)"
  ):
    init.load(workdir, _fresh(LeNet5(num_classes=5)))


def test_missing_parameters_are_named(lenet_run):
  workdir, _ = lenet_run
  with pytest.raises(
    ValueError, match=r"missing in the source: \['params/backbone/conv1/kernel'.*target_prefix"
  ):
    init.load({"path": workdir}, _fresh(_Detector()))


def test_missing_paths_and_bad_patterns(tmp_path, lenet_run):
  fresh = _fresh(LeNet5())
  with pytest.raises(FileNotFoundError, match=r"init.path: .*does not exist"):
    init.load(str(tmp_path / "nowhere"), fresh)
  with pytest.raises(
    FileNotFoundError, match=r"init.path: expected a run's workdir with checkpoints"
  ):
    init.load(str(tmp_path), fresh)
  workdir, _ = lenet_run
  with pytest.raises(ValueError, match=r"init.exclude: the pattern 'head' matches no parameter"):
    init.load({"path": workdir, "exclude": ("head",)}, fresh)
  with pytest.raises(ValueError, match=r"init.target_prefix: no parameter .* under 'neck'"):
    init.load({"path": workdir, "target_prefix": "neck"}, fresh)
  with pytest.raises(ValueError, match=r"init: expected the keys"):
    init.load({"path": workdir, "prefix": "x"}, fresh)


def test_torchvision_state_dict_into_a_backbone_sub_tree(tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from research.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  from research.models.resnet import ResNet18  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  net = torchvision.models.resnet18(weights=None)
  path = tmp_path / "resnet18.pth"
  torch.save(net.state_dict(), path)

  class Backboned(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
      _, out = ResNet18(num_classes=0, name="backbone")(x, train=train)
      return nn.Dense(3, name="head")(out["pre_logits"]), out

  fresh = _fresh(Backboned(), (1, 32, 32, 3))
  variables, report = init.load({"path": str(path), "target_prefix": "backbone"}, fresh)
  expected = tv.convert(net.state_dict(), ResNet18(), input_shape=(1, 32, 32, 3))
  for collection in ("params", "batch_stats"):
    got = variables[collection]["backbone"]
    want = {k: v for k, v in expected[collection].items() if k != "fc"}
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  assert report["ignored"] == ["fc.bias", "fc.weight"]
  assert report["fresh"] == ["head/bias", "head/kernel"]
  with pytest.raises(ValueError, match=r"init.source_prefix: only a workdir source"):
    init.load({"path": str(path), "source_prefix": "x"}, fresh)


def test_the_loop_loads_init_then_resumes_without_loading_again(lenet_run, tmp_path, caplog):
  from experiments import lenet5_mnist  # pylint: disable=import-outside-toplevel

  workdir, trained = lenet_run
  c = lenet5_mnist.get_config()
  c.total_steps, c.log_every_steps, c.eval_every_steps = 10, 10, 0
  c.checkpoint_every_steps, c.batch_size, c.eval_batch_size = 10, 32, 500
  c.init.path = workdir
  c.optimizer.learning_rate = 0.0  # nothing moves: the result is the loaded weights
  with caplog.at_level(logging.INFO, logger="research.train.init"):
    results = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert "init: loaded 10 arrays" in caplog.text
  from research.train.state import param_fingerprint  # pylint: disable=import-outside-toplevel

  assert results["param_fingerprint"] == param_fingerprint(trained)
  caplog.clear()
  c.total_steps = 20
  with caplog.at_level(logging.INFO, logger="research.train.init"):
    loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert "init: loaded" not in caplog.text  # resumed from its own checkpoint


def test_the_papers_vgg16_init_fills_the_backbone_and_the_box_head_from_one_file(tmp_path):
  """Faster R-CNN's VGG-16 recipe: torchvision's `features.*` into backbone/body and its
  fc6/fc7 (`classifier.0`, `classifier.3`) into roi_heads/box_head, on a narrow VGG."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  import functools  # pylint: disable=import-outside-toplevel

  from research.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  from research.detection import faster_rcnn, roi_heads  # pylint: disable=import-outside-toplevel
  from research.models import vgg  # pylint: disable=import-outside-toplevel

  cfg, hidden = (4, "M", 4, "M", 4, "M", 4, "M", 4, 4, 4, "M"), 16
  torch.manual_seed(0)
  net = torchvision.models.vgg.VGG(torchvision.models.vgg.make_layers(list(cfg)))
  net.classifier = torch.nn.Sequential(  # torchvision's layout at a width of 16
    torch.nn.Linear(4 * 7 * 7, hidden), torch.nn.ReLU(), torch.nn.Dropout(),
    torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(),
    torch.nn.Linear(hidden, 1000),
  )  # fmt: skip
  path = tmp_path / "vgg.pth"
  torch.save(net.state_dict(), path)

  paper = faster_rcnn.FasterRCNN_VGG16.keywords
  model = faster_rcnn.FasterRCNN_VGG16(
    num_classes=3,
    backbone=functools.partial(faster_rcnn.VGGConv5, vgg=functools.partial(vgg.VGG, cfg=cfg)),
    roi_heads=functools.partial(
      paper["roi_heads"], box_head=functools.partial(roi_heads.VGGBoxHead, hidden=hidden)
    ),
  )
  fresh = _fresh(model, (1, 64, 64, 3))
  variables, report = init.load(
    {"path": str(path), "target_prefix": "backbone/body,roi_heads/box_head"}, fresh
  )
  want = tv.convert(net.state_dict(), vgg.VGG(cfg=cfg, hidden=hidden), input_shape=(1, 32, 32, 3))
  got = variables["params"]
  assert _equal(
    got["backbone"]["body"], {k: v for k, v in want["params"].items() if "features" in k}
  )
  assert _equal(
    got["roi_heads"]["box_head"], {k: want["params"][k] for k in ("classifier.0", "classifier.3")}
  )
  assert _equal(got["rpn"], fresh["params"]["rpn"])
  assert _equal(got["roi_heads"]["box_predictor"], fresh["params"]["roi_heads"]["box_predictor"])
  assert report["ignored"] == ["classifier.6.bias", "classifier.6.weight"]
  assert all(name.startswith(("rpn/", "roi_heads/box_predictor/")) for name in report["fresh"])
  # The experiment's default recipe names these prefixes.
  from experiments import faster_rcnn_voc2007  # pylint: disable=import-outside-toplevel

  recipe = faster_rcnn_voc2007.get_config().init
  assert init._prefixes(recipe.target_prefix) == [("backbone", "body"), ("roi_heads", "box_head")]
  with pytest.raises(ValueError, match=r"init.target_prefix: no parameter .* under 'roi_heads/fc'"):
    init.load({"path": str(path), "target_prefix": "backbone/body,roi_heads/fc"}, fresh)


def _save_params(directory, params) -> None:
  """A workdir whose one checkpoint (step 1) holds `params`."""
  from research.train.checkpoints import Checkpointer  # pylint: disable=import-outside-toplevel
  from research.train.state import TrainState  # pylint: disable=import-outside-toplevel

  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats={},
    opt_state={},
    rng=jax.random.PRNGKey(0),
    tx=None,
  )
  saver = Checkpointer(str(directory / "checkpoints"))
  saver.save(1, state, {})
  saver.close()


def test_convolutionalize_reads_a_vgg_classifier_into_fcn_as_convolutions(tmp_path):
  """init.convolutionalize: torchvision's VGG file (and a VGG workdir) into FCN's
  convolutionalized net: at 224 its 1x1 score map is torch's logits (fc6 and fc7 reshaped,
  not discarded); an FCN-32s of 3 classes takes all but score_fr, left fresh."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from research.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  from research.models import fcn, vgg  # pylint: disable=import-outside-toplevel

  cfg, hidden = (4, "M", 4, "M", 8, "M", 8, "M", 8, "M"), 16
  torch.manual_seed(0)
  net = torchvision.models.vgg.VGG(torchvision.models.vgg.make_layers(list(cfg)), num_classes=5)
  net.classifier = torch.nn.Sequential(  # torchvision's layout at a width of 16
    torch.nn.Linear(8 * 7 * 7, hidden), torch.nn.ReLU(), torch.nn.Dropout(),
    torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(),
    torch.nn.Linear(hidden, 5),
  )  # fmt: skip
  net.eval()
  path = tmp_path / "vgg.pth"
  torch.save(net.state_dict(), path)
  x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()

  conv = fcn.ConvolutionalizedVGG(num_classes=5, cfg=cfg, hidden=hidden)
  fresh = _fresh(conv, (1, 224, 224, 3))
  with pytest.raises(ValueError, match=r"missing in the source: .*fc6/kernel"):
    init.load({"path": str(path)}, fresh)  # without convolutionalize: FCN's names are absent
  variables, report = init.load({"path": str(path), "convolutionalize": True}, fresh)
  assert report["fresh"] == [] and report["ignored"] == []
  scores, _ = conv.apply(variables, jnp.asarray(x))
  assert float(np.abs(expected).mean()) > 1e-2  # not trivially zero
  np.testing.assert_allclose(scores[:, 0, 0], expected, rtol=1e-4, atol=1e-5)

  # The same VGG as this repository's classifier, from a workdir.
  ours = tv.convert(
    net.state_dict(), vgg.VGG(cfg=cfg, hidden=hidden, num_classes=5), input_shape=(1, 224, 224, 3)
  )
  _save_params(tmp_path / "run", ours["params"])
  from_workdir, _ = init.load({"path": str(tmp_path / "run"), "convolutionalize": True}, fresh)
  assert _equal(from_workdir["params"], variables["params"])

  fcn32 = fcn.FCN32s(num_classes=3, cfg=cfg, hidden=hidden)
  fresh32 = _fresh(fcn32, (1, 64, 64, 3))
  loaded, report = init.load(
    {"path": str(path), "convolutionalize": True, "exclude": ("^score_fr/",)}, fresh32
  )
  assert report["fresh"] == ["score_fr/bias", "score_fr/kernel"]
  assert report["ignored"] == ["score_fr.bias", "score_fr.weight"]
  assert _equal(loaded["params"]["fc6"], variables["params"]["fc6"])
  headless = tmp_path / "features.pth"
  torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, headless)
  with pytest.raises(ValueError, match=r"init.convolutionalize: .* no VGG classifier"):
    init.load({"path": str(headless), "convolutionalize": True}, fresh)
