"""research.ops.onednn: the oneDNN convolutions against lax.conv_general_dilated, under jit,
vmap, pmap, grad and grad of grad; the build cache (concurrent builds, corrupted files) and
the fallback without a compiler."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research.ops import onednn
from research.ops.onednn import build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_onednn = pytest.mark.skipif(not onednn.available(), reason=onednn.status()[1])


def _lax(x, w, b, strides, padding, dilation, groups):
  y = lax.conv_general_dilated(
    x,
    w,
    strides,
    padding,
    rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    precision="highest",
  )
  return y if b is None else y + b


def _ours(x, w, b, strides, padding, dilation, groups):
  return onednn.conv2d(x, w, b, strides=strides, padding=padding, dilation=dilation, groups=groups)


def _close(a, b, rtol=1e-4):
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(jnp.abs(b).max()))


def test_plan_exact_padding_and_what_it_refuses():
  # lax's padding 3 on a 7x7 stride-2 stem over 224 pixels: oneDNN wants 2 on the right.
  g = onednn.plan((1, 224, 224, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3)))
  assert g.padding == ((3, 2), (3, 2)) and g.out_hw == (112, 112)
  # A 3x3 stride-2 kernel on 12 pixels never reads the last row: it is cut.
  g = onednn.plan((1, 12, 12, 4), (3, 3, 4, 4), (2, 2), ((0, 0), (0, 0)))
  assert g.in_hw == (11, 11) and g.padding == ((0, 0), (0, 0)) and g.out_hw == (5, 5)
  assert "negative" in onednn.plan((1, 12, 12, 4), (3, 3, 4, 4), (1, 1), ((-1, 0), (0, 0)))
  assert "groups" in onednn.plan((1, 12, 12, 4), (3, 3, 3, 4), (1, 1), ((0, 0), (0, 0)))
  # Padding wider than the kernel reaches (output pixels of padding only) goes to lax.
  assert "beyond the kernel's reach 2" in onednn.plan(
    (1, 12, 12, 4), (3, 3, 4, 4), (1, 1), ((3, 3), (3, 3))
  )
  assert not isinstance(onednn.plan((1, 12, 12, 4), (3, 3, 4, 4), (1, 1), ((2, 2), (2, 2))), str)
  with pytest.raises(ValueError, match="conv2d: expected float32"):
    onednn.conv2d(jnp.ones((1, 5, 5, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16))


@needs_onednn
@pytest.mark.parametrize(
  "x_shape, w_shape, strides, padding, dilation, groups, bias",
  [
    ((2, 9, 9, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, False),
    ((2, 20, 21, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), (1, 1), 1, True),
    ((2, 11, 13, 4), (3, 2, 2, 6), (2, 1), ((0, 1), (1, 0)), (1, 1), 2, True),
    ((2, 12, 12, 4), (3, 3, 4, 4), (1, 1), ((2, 2), (2, 2)), (2, 2), 1, False),
    ((2, 10, 10, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 6, False),
    ((2, 15, 15, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0)), (1, 1), 1, False),
    ((2, 16, 16, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0)), (1, 1), 1, False),
    ((2, 12, 13, 4), (3, 3, 4, 4), (2, 2), ((0, 0), (0, 0)), (1, 1), 1, True),
  ],
)
def test_matches_lax_forward_and_both_gradients(
  x_shape, w_shape, strides, padding, dilation, groups, bias
):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  b = jnp.asarray(rng.normal(size=w_shape[3]), jnp.float32) if bias else None
  args = (strides, padding, dilation, groups)
  _close(jax.jit(_ours, static_argnums=(3, 4, 5, 6))(x, w, b, *args), _lax(x, w, b, *args))
  argnums = (0, 1, 2) if bias else (0, 1)

  def grads(conv):
    return jax.jit(jax.grad(lambda x, w, b: jnp.sum(jnp.sin(conv(x, w, b, *args))), argnums))(
      x, w, b
    )

  for ours, ref in zip(grads(_ours), grads(_lax), strict=True):
    _close(ours, ref)


@needs_onednn
def test_vmap_over_images_kernels_and_both():
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 4)), jnp.float32)
  ws = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 5)), jnp.float32)
  pad = ((1, 1), (1, 1))
  ours = lambda x, w: onednn.conv2d(x, w, padding=pad)  # noqa: E731
  ref = lambda x, w: _lax(x, w, None, (1, 1), pad, (1, 1), 1)  # noqa: E731
  for axes in [(0, None), (None, 0), (0, 0)]:
    x = xs if axes[0] == 0 else xs[0]
    w = ws if axes[1] == 0 else ws[0]
    _close(jax.jit(jax.vmap(ours, axes))(x, w), jax.vmap(ref, axes)(x, w))
    # Per-example kernel gradients: the mapped backward-weights call loops over the map.
    loss = lambda f: lambda a, b: jnp.sum(f(a, b) ** 2)  # noqa: E731
    _close(
      jax.jit(jax.vmap(jax.grad(loss(ours), (0, 1)), axes))(x, w)[1],
      jax.vmap(jax.grad(loss(ref), (0, 1)), axes)(x, w)[1],
    )


@needs_onednn
def test_strided_one_by_one_input_gradient_under_vmap_and_grad_of_grad():
  """A 1x1 stride-2 kernel's input gradient is a stride-1 call spread out with zeros: under
  vmap (mapped images and kernels) and in the input-gradient penalty's double pass."""
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.normal(size=(2, 2, 9, 10, 4)), jnp.float32)
  ws = jnp.asarray(rng.normal(size=(2, 1, 1, 4, 6)), jnp.float32)
  args = ((2, 3), ((0, 0), (0, 0)), (1, 1), 1)

  def penalty(conv):
    def loss(x, w):
      dx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w, None, *args))))(x)
      return jnp.sum(dx**2) + jnp.sum(dx[:, ::2, ::3])

    return jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))

  for ours, ref in zip(
    jax.tree.leaves(penalty(_ours)(xs, ws)), jax.tree.leaves(penalty(_lax)(xs, ws)), strict=True
  ):
    _close(ours, ref)


@needs_onednn
def test_grad_of_grad_and_pmap():
  """The input-gradient penalty's double backward pass, and a pmapped step."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  args = ((2, 2), ((1, 1), (1, 1)), (1, 1), 1)

  def penalty(conv):
    def loss(w):
      dx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w, None, *args))))(x)
      return jnp.sum(dx**2)

    return jax.jit(jax.value_and_grad(loss))(w)

  for ours, ref in zip(penalty(_ours), penalty(_lax), strict=True):
    _close(ours, ref)
  n = jax.local_device_count()
  xs = jnp.broadcast_to(x, (n, *x.shape))
  pmapped = jax.pmap(lambda x: jax.grad(lambda w: jnp.sum(_ours(x, w, None, *args) ** 2))(w))
  _close(pmapped(xs)[0], jax.grad(lambda w: jnp.sum(_lax(x, w, None, *args) ** 2))(w))


def _run(code, **env):
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
    capture_output=True,
    text=True,
    timeout=600,
  )


@needs_onednn
def test_a_primitive_runs_on_a_thread_other_than_the_one_that_created_it():
  """AlexNet's conv1 at its smallest input, which oneDNN computes by im2col and a gemm where
  the CPU has no AVX-512, created by one thread's call and run by the next thread's (as XLA
  runs a cached primitive on any of its threads). With oneDNN's library-managed scratchpad,
  which is per thread, the second call wrote through a null pointer (SIGSEGV on an AMD
  EPYC with AVX2); the primitives now take their scratchpad from the extension."""
  code = """
  import threading
  import jax
  import jax.numpy as jnp
  import numpy as np
  from research.ops import onednn
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 63, 63, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(11, 11, 3, 64)), jnp.float32)
  conv = jax.jit(lambda x, w: onednn.conv2d(x, w, strides=(4, 4), padding=((2, 2), (2, 2))))
  first = []
  thread = threading.Thread(target=lambda: first.append(np.asarray(conv(x, w))))
  thread.start()
  thread.join()
  print(float(np.abs(np.asarray(conv(x, w)) - first[0]).max()))
  """
  result = _run(code)
  assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
  assert float(result.stdout.split()[-1]) == 0.0


LOAD = """
from research.ops.onednn import build
print(build.load().research_onednn_abi(), build.library_path())
"""


@needs_onednn
def test_cache_concurrent_builds_and_a_corrupted_library(tmp_path):
  env = {"RESEARCH_CACHE_DIR": str(tmp_path)}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", LOAD],
      cwd=ROOT,
      env={**os.environ, **env},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  paths = {out.split()[1] for out, _ in outs}
  assert len(paths) == 1 and all(out.split()[0] == str(build.ABI) for out, _ in outs)
  (path,) = paths
  assert sorted(os.listdir(tmp_path / "onednn")) == sorted(
    ["build.lock", os.path.basename(path), os.path.basename(path)[:-3] + ".sha256"]
  )
  for damage in (b"", b"\x7fELF garbage"):
    with open(path, "wb") as f:
      f.write(damage)
    result = _run(LOAD, **env)
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(path) > 10_000


def test_without_a_compiler_the_extension_says_why_and_nothing_fails(tmp_path):
  code = """
  from research.ops import onednn
  ok, why = onednn.status()
  print(ok, onednn.available())
  print(why)
  """
  result = _run(code, PATH=str(tmp_path), CXX="", RESEARCH_CACHE_DIR=str(tmp_path))
  assert result.returncode == 0, result.stderr
  first, reason = result.stdout.splitlines()[:2]
  assert first == "False False"
  assert "no C++ compiler found" in reason
