"""Several training sources as one stream: batches interleaved in proportion to their weights.

Grain's `MapDataset.mix` does the interleaving: it is deterministic, so of any `n` consecutive
batches source `s` gives `n * w_s / sum(w)` to within one batch, and batch `j` of the mixture is
a pure function of `j` like a single source's. The mixture's state is again one position, and
resume is bit-exact. Each batch comes from one source (its bucket shapes are the shared ones) and
says which in `batch["source"]`; each source shuffles and repeats on its own.

    it = Mixture({"synth": BatchIterator(a, toks), "libri": BatchIterator(b, toks)},
                 {"synth": 0.7, "libri": 0.3})
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from mkd_jax.data.batching import Stream

SOURCE = "source"


def _tagged(name: str, batch: dict) -> dict:
    return dict(batch, **{SOURCE: np.array(name)})


class Mixture(Stream):
    """Batches of every source, interleaved by weight (see the module docstring).

    Args:
      sources: name -> an endless `BatchIterator` (`repeat=True`), or anything with its
        `repeat`, `dataset()`, `fingerprint()` and `count_failures(batch)` (the teacher cache's
        `CachedBatches`); their prefetch and worker settings are ignored, the mixture's apply.
      weights: name -> a positive weight (normalised to probabilities).
      prefetch, workers: as `BatchIterator`'s.
    """

    def __init__(
        self,
        sources: Mapping,
        weights: Mapping[str, float],
        *,
        prefetch: int = 2,
        workers: int = 0,
    ):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        if set(weights) != set(sources):
            raise ValueError(f"weights name {sorted(weights)}, sources {sorted(sources)}")
        for name, w in weights.items():
            if not np.isfinite(w) or w <= 0:
                raise ValueError(f"weight of source {name!r} must be positive, got {w}")
        for name, it in sources.items():
            if not it.repeat:
                raise ValueError(f"source {name!r} must repeat: a mixture is endless")
        self.sources = dict(sources)
        total = sum(weights.values())
        self.weights = {n: float(weights[n]) / total for n in self.sources}
        self.prefetch, self.workers = prefetch, workers
        self._position = 0

    def dataset(self):
        import grain

        parts = [it.dataset().map(functools.partial(_tagged, n)) for n, it in self.sources.items()]
        return grain.MapDataset.mix(parts, [self.weights[n] for n in self.sources])

    def _received(self, j: int, batch: dict) -> None:
        self.sources[str(batch[SOURCE])].count_failures(batch)

    def _fingerprint(self) -> dict:
        return {n: it.fingerprint() for n, it in self.sources.items()}

    def state(self) -> dict:
        return {"position": self._position, "weights": self.weights, "plans": self._fingerprint()}

    def restore(self, state: Mapping) -> None:
        """Continues after the batch at which `state` was taken.

        Raises:
          ValueError: if the sources, their data or the weights differ from the saved state.
        """
        self.close()
        if dict(state["plans"]) != self._fingerprint():
            raise ValueError(
                f"the mixture's sources differ from the saved state ({sorted(state['plans'])} "
                f"vs {sorted(self.sources)}, or their data or tokenizers changed)"
            )
        saved = {n: float(w) for n, w in state["weights"].items()}
        if any(abs(saved[n] - w) > 1e-12 for n, w in self.weights.items()):
            raise ValueError(f"the mixture's weights changed: saved {saved}, now {self.weights}")
        self._position = int(state["position"])

    @property
    def report(self):
        """The first source's skip report (every source keeps its own in `sources[n].report`)."""
        return next(iter(self.sources.values())).report
