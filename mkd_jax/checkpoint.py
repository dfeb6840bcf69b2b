"""A thin orbax wrapper: atomic, asynchronous checkpoints of the train state plus JSON metadata.

Only the trainable subtree, optimizer state, step, RNG and data-iterator position are saved;
teachers and the frozen student load from their own checkpoints. Orbax writes each step into a
temporary folder and renames it when complete, so an interrupted save never shadows a good one.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save and restore `{"state": pytree, "meta": json}` under `directory`."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self._mngr = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Start an asynchronous save of `state` and `meta` (JSON-able) at `step`.

        A step that is already saved (e.g. by the cadence just before a SIGTERM) is kept as is.
        """
        if step in self._mngr.all_steps():
            return False
        return self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, step: int, like) -> tuple[object, dict]:
        """Restore into the shapes, dtypes and shardings of `like` (arrays or ShapeDtypeStructs)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        """Block until pending saves are on disk, then release the manager."""
        self._mngr.wait_until_finished()
        self._mngr.close()
