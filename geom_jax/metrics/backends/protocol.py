"""What both execution contexts (engine.LayerContext, blocked_context.BlockedContext)
answer the same way: the caller's inputs, per-context caching, and the exact squared
distances along the shared neighbour lists (``self._knn``: a refinement.CertifiedKnn)."""

import numpy as np


class ContextBase:
    """Mixin of the layer contexts; subclasses set ``_inputs``, ``knn_k`` and ``_knn``."""

    def input(self, name):
        if name not in self._inputs:
            raise ValueError(
                f"layer_geometry needs inputs[{name!r}] (pass inputs={{{name!r}: ...}})"
            )
        return self._inputs[name]

    def cached(self, key, fn):
        """fn(self), computed once per context for ``key`` (hashable)."""
        cache = self.__dict__.setdefault("_cached", {})
        if key not in cache:
            cache[key] = fn(self)
        return cache[key]

    def knn_sq_at(self, positions, also=None):
        """Exact squared distances [C, N, len(positions)] at 0-based positions of the
        lists (only those pairs are refined; a request inside an earlier one reads
        it); with ``also`` [C, N, J], the exact squared distances of those pairs
        too, from the same pass (unmasked)."""
        positions = tuple(int(p) for p in positions)
        if also is not None:
            return self._knn.sq_at(positions, also)
        cache = self.__dict__.setdefault("_knn_sq_at", {})
        for done, sq in cache.items():
            if positions == done:
                return sq
            if set(positions) <= set(done):
                return sq[..., np.array([done.index(p) for p in positions])]
        cache[positions] = self._knn.sq_at(positions)
        return cache[positions]

    @property
    def knn_sq(self):
        return self.knn_sq_at(range(self.knn_k))

    @property
    def knn_idx(self):
        return self._knn.idx
