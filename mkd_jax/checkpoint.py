"""A thin orbax wrapper: atomic, asynchronous checkpoints of the train state plus JSON metadata.

Only the trainable subtree, optimizer state, step, RNG and data-iterator position are saved;
teachers and the frozen student load from their own checkpoints. Orbax writes each step into a
temporary folder and renames it when complete, so an interrupted save never shadows a good one.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mkd_jax.cli import RunFailed


class CheckpointDamaged(RunFailed):
    """No checkpoint in a folder could be restored intact."""


def fingerprint(state) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order (host copy of `state`)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(state)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def nonfinite_leaves(state) -> list[str]:
    """Paths of floating leaves holding NaN or Inf."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]:
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad.append(jax.tree_util.keystr(path))
    return bad


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
        The state's fingerprint goes into `meta`, so a restore can tell a damaged checkpoint.

        Raises:
          RunFailed: the state holds NaN or Inf (a non-finite state is never saved).
        """
        if step in self._mngr.all_steps():
            return False
        bad = nonfinite_leaves(state)
        if bad:
            raise RunFailed(
                f"step {step}: refusing to save a non-finite state ({', '.join(bad[:3])}); the "
                f"latest checkpoint stays step {self._mngr.latest_step()}"
            )
        meta = dict(meta, fingerprint=fingerprint(state))
        return self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def restore_latest(self, like) -> tuple[object, dict, int] | None:
        """`(state, meta, step)` of the newest checkpoint that restores intact, or None if the
        folder holds none. A damaged one (unreadable, wrong fingerprint, non-finite) is skipped
        with a one-line warning naming it.

        Raises:
          CheckpointDamaged: checkpoints exist but none is intact.
        """
        steps = self.all_steps()
        for k, step in enumerate(reversed(steps)):
            state, meta, why = self.restore_intact(step, like)
            if why is None:
                return state, meta, step
            older = steps[-k - 2] if k + 1 < len(steps) else None
            logging.warning(
                "checkpoint %s/%d is damaged (%s); %s",
                self._mngr.directory,
                step,
                why,
                f"falling back to step {older}" if older is not None else "no older one left",
            )
        if steps:
            raise CheckpointDamaged(
                f"no intact checkpoint in {self._mngr.directory} (steps {steps}); move the "
                "folder away to start the run afresh"
            )
        return None

    def restore_intact(self, step: int, like) -> tuple[object, dict, str | None]:
        """`(state, meta, None)` of step `step` if it restores intact, else `(None, None, why)`:
        unreadable (orbax and TensorStore raise many types for damaged files, or for a
        checkpoint of another shape), non-finite, or not matching its saved fingerprint."""
        try:
            state, meta = self.restore(step, like)
        except Exception as e:  # noqa: BLE001
            return None, None, " ".join(str(e).split())[:200] or type(e).__name__
        bad = nonfinite_leaves(state)
        expected = meta.get("fingerprint")
        if bad:
            return None, None, f"non-finite values in {', '.join(bad[:3])}"
        if expected is not None and fingerprint(state) != expected:
            return None, None, "its contents do not match the fingerprint saved with it"
        return state, meta, None

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
