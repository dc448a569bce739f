"""Executes every notebook in colab/ top to bottom on CPU, as a reader would run it.

Each notebook asserts its own numbers and ends by printing `NOTEBOOK OK`; a
notebook that raises, or never prints that line, fails here.
"""

from __future__ import annotations

import glob
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))
DONE = "NOTEBOOK OK"


def _printed_lines(nb) -> list[str]:
  """Every line the notebook's code cells printed or returned as a cell's value."""
  lines = []
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      if output.get("output_type") == "stream" and output.get("name") == "stdout":
        lines += output.get("text", "").splitlines()
      elif output.get("output_type") == "execute_result":  # not figures' "<Figure ...>"
        lines += output.get("data", {}).get("text/plain", "").splitlines()
  return lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  from jupyter_client.manager import KernelManager  # pylint: disable=import-outside-toplevel

  # The kernel must run this interpreter, which has the project's dependencies;
  # the "python3" spec says `python`, which jupyter_client maps to sys.executable.
  kernel_python = KernelManager(kernel_name="python3").format_kernel_cmd()[0]
  assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable), (
    f"kernel 'python3' starts {kernel_python}, not the test's {sys.executable}"
  )

  # The kernel inherits this environment: `research` importable from the
  # checkout, and JAX on CPU whatever accelerator the machine has.
  pythonpath = os.environ.get("PYTHONPATH")
  monkeypatch.setenv("PYTHONPATH", REPO + (os.pathsep + pythonpath if pythonpath else ""))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # Workdirs the notebook makes with tempfile land in pytest's tmp_path, which pytest prunes.
  monkeypatch.setenv("TMPDIR", str(tmp_path))

  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": REPO}}
  )
  client.execute()  # raises CellExecutionError, naming the cell, on any error

  lines = _printed_lines(nb)
  assert DONE in (line.strip() for line in lines), (
    f"{os.path.basename(path)} ran without error but never printed {DONE!r}; "
    f"its last lines:\n" + "\n".join(lines[-20:])
  )
  print("\n".join(lines[-12:]))  # the notebook's checks, shown with `pytest -rP`
