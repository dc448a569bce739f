"""The config keys every classification experiment has, with neutral defaults, and the
recipes several experiments share (ImageNet with SGD, CIFAR-10, the offline digits).

Experiments start from `base()` and set what their paper says; a key that an
experiment leaves alone can still be overridden on the command line.
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

# Per-channel statistics of the [0, 1]-scaled training images.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_TRAIN = 1_281_167
CIFAR10_TRAIN = 50_000


def imagenet_sgd(
  c: ConfigDict,
  *,
  crop: str,
  batch_size: int,
  epochs: float,
  learning_rate: float,
  weight_decay: float = 0.0,
  decay_epochs: tuple[float, ...] = (),
  decay_every_epochs: float | None = None,
  decay_factor: float = 0.1,
) -> None:
  """The ImageNet papers' recipe shape on TFDS imagenet2012: `crop`s (see c.input.crop) and
  flips, SGD with momentum 0.9 for `epochs`, evaluation every 5 epochs, and the learning rate
  multiplied by `decay_factor` at each of `decay_epochs` (a step schedule) or every
  `decay_every_epochs` epochs (exponential)."""
  if bool(decay_epochs) == (decay_every_epochs is not None):
    raise ValueError(
      f"imagenet_sgd: expected exactly one of decay_epochs and decay_every_epochs; received "
      f"decay_epochs={decay_epochs!r}, decay_every_epochs={decay_every_epochs!r}."
    )
  c.dataset = "imagenet2012"
  c.input.crop = crop
  c.input.random_flip = True
  c.input.mean, c.input.std = IMAGENET_MEAN, IMAGENET_STD
  c.batch_size = batch_size
  c.eval_batch_size = 250  # divides the 50,000 validation images
  c.checkpoint_every_steps = 5000
  c.total_steps = epochs_to_steps(epochs, IMAGENET_TRAIN, batch_size)
  c.eval_every_steps = epochs_to_steps(5, IMAGENET_TRAIN, batch_size)
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.weight_decay = weight_decay
  c.optimizer.decay_factor = decay_factor
  if decay_epochs:
    c.optimizer.schedule = "step"
    c.optimizer.boundaries = tuple(e / epochs for e in decay_epochs)
  else:
    c.optimizer.schedule = "exponential"
    c.optimizer.decay_every_steps = epochs_to_steps(decay_every_epochs, IMAGENET_TRAIN, batch_size)


def torchvision_resnet_recipe(c: ConfigDict) -> None:
  """torchvision's ResNet recipe on ImageNet: batch 256, SGD momentum 0.9, lr 0.1 divided
  by 10 at epochs 30 and 60 of 90, weight decay 1e-4, random-resized crops and flips."""
  imagenet_sgd(
    c,
    crop="random_resized",
    batch_size=256,
    epochs=90,
    learning_rate=0.1,
    weight_decay=1e-4,
    decay_epochs=(30, 60),
  )


def cifar10_sgd(
  c: ConfigDict,
  *,
  batch_size: int,
  epochs: int,
  weight_decay: float,
  decay_epochs: tuple[int, ...],
  decay_factor: float,
) -> None:
  """The CIFAR-10 recipe of the wide-ResNet and DenseNet papers (TFDS cifar10): flips and
  4-pixel pad-and-crop, SGD with Nesterov momentum 0.9 from a learning rate of 0.1,
  multiplied by `decay_factor` at each of `decay_epochs`, evaluation every 10 epochs."""
  c.dataset = "cifar10"
  c.input.mean, c.input.std = CIFAR10_MEAN, CIFAR10_STD
  c.input.random_shift = 4  # pad by 4 with black, crop 32x32
  c.input.random_flip = True
  c.batch_size = batch_size
  c.eval_batch_size = 500
  c.total_steps = epochs_to_steps(epochs, CIFAR10_TRAIN, batch_size)
  c.eval_every_steps = epochs_to_steps(10, CIFAR10_TRAIN, batch_size)
  c.checkpoint_every_steps = 2000
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = weight_decay
  c.optimizer.schedule = "step"
  c.optimizer.boundaries = tuple(e / epochs for e in decay_epochs)
  c.optimizer.decay_factor = decay_factor


def runlocal_digits(c: ConfigDict, *, upscale: int = 1, steps: int) -> None:
  """Sets c's data to the offline mnist5k digits as 3-channel images of (28 * upscale + 4)^2."""
  c.dataset = "mnist5k"
  c.input.crop = "none"
  c.input.channels = 3
  c.input.upscale = upscale
  c.input.pad = 2 * upscale
  c.input.mean, c.input.std = MNIST_MEAN, MNIST_STD
  c.input.random_shift = 2 * upscale
  c.input.random_flip = False  # digits are not mirror-symmetric
  c.input.pca_lighting = 0.0
  c.batch_size = 64
  c.eval_batch_size = 200
  c.total_steps = steps
  c.eval_every_steps = 0
  c.checkpoint_every_steps = steps // 2


def base() -> ConfigDict:
  """model, data, input transforms, steps, optimizer: every key the loop reads."""
  c = ConfigDict()
  c.task = "classification"  # research.train.tasks.<task>
  c.model = "lenet.LeNet5"
  c.model_kwargs = ConfigDict()
  c.dtype = "float32"  # or "bfloat16": the models' computation type
  # Pretrained weights (research.train.init): a run's workdir or a torchvision .pth file.
  c.init = ConfigDict(
    {"path": "", "source_prefix": "", "target_prefix": "", "exclude": (), "convolutionalize": False}
  )
  c.loss = "classification"
  c.dataset = "mnist5k"
  c.data_dir = config_dict.placeholder(str)
  # "": the data set's training split; a TFDS split ("train[:10%]", "train[:24]") trains on
  # part of it (its proposals and windows are cached under that name).
  c.train_split = ""
  c.num_classes = config_dict.placeholder(int)  # None: the data set's
  c.input = ConfigDict()
  c.input.pad = 0
  c.input.value_range = (0.0, 1.0)
  c.input.mean = config_dict.placeholder(tuple)
  c.input.std = config_dict.placeholder(tuple)
  c.input.channels = config_dict.placeholder(int)
  c.input.upscale = 1
  c.input.random_shift = 0
  c.input.random_flip = False
  c.input.crop = "none"  # photographs: "random_resized" or "scale_jitter"
  c.input.crop_size = 224
  c.input.resize = 256  # shorter side before the evaluation's centre crop
  c.input.scale_range = (256, 256)  # scale_jitter's [S_min, S_max]
  c.input.pca_lighting = 0.0
  c.input.noise_std = 0.0  # Gaussian noise on the normalized training images
  c.input.noise_probability = 1.0  # the share of training images noised
  c.seed = 0
  c.batch_size = 64
  c.eval_batch_size = 200
  c.total_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.parallelism = "jit"
  # lambda of research.train.steps.train_step's penalty on the loss's input gradient.
  c.input_gradient_penalty = 0.0
  c.optimizer = ConfigDict()
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.boundaries = (0.5, 0.75)
  c.optimizer.decay_factor = 0.1
  c.optimizer.decay_every_steps = 1
  c.optimizer.max_filter_rms = config_dict.placeholder(float)
  # The recipes below were measured with weight decay on every parameter (the library's
  # default is "kernels": none on biases and normalization scales).
  c.optimizer.weight_decay_on = "all"
  c.optimizer.clip_global_norm = 0.0
  return c


def epochs_to_steps(epochs: float, examples: int, batch_size: int) -> int:
  """Optimizer steps for `epochs` passes over `examples` in batches of `batch_size`."""
  return int(round(epochs * examples / batch_size))


def variant(arg: str | None, name: str, allowed=(None, "runlocal")) -> None:
  """ValueError unless `arg` is one of the experiment's variants."""
  if arg not in allowed:
    raise ValueError(f"{name}: expected variant one of {list(allowed)}; received {arg!r}.")
