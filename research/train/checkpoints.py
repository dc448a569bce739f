"""Orbax checkpoints of the train state and the input iterator, with resume and fallback.

A checkpoint is written to a temporary folder and renamed when complete, so a
run killed mid-save leaves the previous checkpoints intact. A checkpoint that
is there but cannot be read (a corrupted disk, a truncated copy) is moved
aside to `checkpoints_corrupted/` with a warning, and the one before it is used.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves {"state": pytree, "data": JSON-able dict} every step it is asked to.

  directory: where checkpoints go (`workdir/checkpoints`).
  max_to_keep: the most recent checkpoints kept on disk.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False
      ),
    )

  def save(self, step: int, state, data_state: dict) -> None:
    """Writes checkpoint `step`; `state` is a pytree of arrays, `data_state` a dict."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
      force=True,
    )
    self._manager.wait_until_finished()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore_latest(self, abstract_state):
    """(step, state, data_state) from the newest readable checkpoint, or None if none.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with shardings) or
    arrays that gives the structure and placement of the restored state.
    """
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
          ),
        )
        return step, restored["state"], dict(restored["data"])
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and tensorstore raise many types for unreadable files; any of them means
        # this checkpoint cannot be used, and an older one can.
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    aside = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupted")
    log.warning(
      "checkpoint %d in %s cannot be restored (%s: %s); moving it to %s and "
      "falling back to the previous checkpoint.",
      step,
      self.directory,
      type(error).__name__,
      str(error).splitlines()[0][:200] if str(error) else "",
      aside,
    )
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      target = os.path.join(aside, str(step))
      if os.path.exists(target):
        shutil.rmtree(target)
      shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()
