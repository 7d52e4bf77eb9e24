"""How one Hugging Face tensor becomes one (per-layer) Decoder array, and
which slice of it a shard of that array needs.

A `Layout` optionally crops one HF axis to a range (Phi-3's fused q|k|v and
gate|up rows), splits each HF axis into factors (`[H*hd, D]` -> `[H, hd, D]`),
optionally picks one index on a split axis (GPT-NeoX's fused q|k|v), then
transposes. Because it is only reshape / pick / transpose, a shard of the
result maps back to a box of the HF tensor: each HF axis is read over the
range its outermost factor needs (inner factors are read whole and sliced
in memory), so a head-sharded q_proj reads only its heads' rows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Index = tuple  # of slices (and ints) over an array's axes


@dataclasses.dataclass(frozen=True)
class Layout:
    """`split[a]` are the factors of HF axis a (one may be -1); `pick` is
    (split axis, index) or None; `perm` orders the remaining axes; `crop`
    (HF axis, start) keeps rows start .. start + prod(split[axis]) of that
    axis first (its factors then have no -1)."""

    split: tuple[tuple[int, ...], ...] | None = None
    pick: tuple[int, int] | None = None
    perm: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None

    def _cropped(self, hf_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.crop is None:
            return tuple(hf_shape)
        axis, start = self.crop
        length = math.prod(self.split[axis])
        if start + length > hf_shape[axis]:
            raise ValueError(f"rows {start}:{start + length} exceed an axis of {hf_shape[axis]}")
        return tuple(length if a == axis else n for a, n in enumerate(hf_shape))

    def factors(self, hf_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        hf_shape = self._cropped(hf_shape)
        if self.split is None:
            return [(n,) for n in hf_shape]
        if len(self.split) != len(hf_shape):
            raise ValueError(f"layout {self.split} does not fit a tensor of shape {hf_shape}")
        out = []
        for n, f in zip(hf_shape, self.split):
            known = math.prod(x for x in f if x != -1)
            f = tuple(n // known if x == -1 else x for x in f)
            if math.prod(f) != n:
                raise ValueError(f"cannot split an axis of {n} into {f}")
            out.append(f)
        return out

    def _arrange(self, x: np.ndarray, local: Index) -> np.ndarray:
        x = x[local]
        return np.ascontiguousarray(x if self.perm is None else x.transpose(self.perm))

    def __call__(self, w: np.ndarray) -> np.ndarray:
        factors = self.factors(w.shape)
        if self.crop is not None:
            axis, start = self.crop
            box = [slice(None)] * w.ndim
            box[axis] = slice(start, start + math.prod(factors[axis]))
            w = w[tuple(box)]
        x = w.reshape(tuple(n for f in factors for n in f))
        local = [slice(None)] * x.ndim
        if self.pick is not None:
            local[self.pick[0]] = self.pick[1]
        return self._arrange(x, tuple(local))

    def _split_index(self, index: Index, ndim: int) -> list:
        """`index` over our axes -> index over the split HF axes."""
        out = list(index)
        if self.perm is not None:
            out = [None] * len(self.perm)
            for ours, theirs in enumerate(self.perm):
                out[theirs] = index[ours]
        if self.pick is not None:
            out.insert(self.pick[0], self.pick[1])
        assert len(out) == ndim, (index, self)
        return out

    def window(self, hf_shape: tuple[int, ...], index: Index) -> tuple[Index, Index]:
        """(box to read from the HF tensor, index into that box after it is
        reshaped to the split factors) for the shard `index` of our array."""
        factors = self.factors(hf_shape)
        split_shape = [n for f in factors for n in f]
        wanted = self._split_index(index, len(split_shape))
        read, local, at = [], [], 0
        for f in factors:
            outer, inner = wanted[at], wanted[at + 1 : at + len(f)]
            at += len(f)
            stride = math.prod(f[1:])
            if isinstance(outer, slice):
                start, stop, step = outer.indices(f[0])
                stop = max(stop, start)
                local.append(slice(0, stop - start, step))
            else:
                start, stop = int(outer), int(outer) + 1
                local.append(0)
            read.append(slice(start * stride, stop * stride))
            local.extend(inner)
        if self.crop is not None:
            axis, start = self.crop
            r = read[axis]
            read[axis] = slice(r.start + start, r.stop + start)
        return tuple(read), tuple(local)

    def read(self, tensor, hf_shape: tuple[int, ...], index: Index) -> np.ndarray:
        """The shard `index` of our array from `tensor`, anything that takes
        `tensor[box]` (a safetensors slice, a NumPy array), reading one box."""
        box, local = self.window(hf_shape, index)
        block = np.asarray(tensor[box])
        factors = self.factors(hf_shape)
        lengths = [b.stop - b.start for b in box]
        shape = [n for f, m in zip(factors, lengths) for n in (m // math.prod(f[1:]), *f[1:])]
        return self._arrange(block.reshape(shape), local)


SAME = Layout()


def in_out(*out_shape: int) -> Layout:
    """HF Linear [out, in] -> [in, *out_shape]."""
    return Layout(
        split=(tuple(out_shape), (-1,)), perm=(len(out_shape),) + tuple(range(len(out_shape)))
    )


def heads_to_embed(heads: int, head_dim: int) -> Layout:
    """o_proj [D, H*hd] -> [H, hd, D]."""
    return Layout(split=((-1,), (heads, head_dim)), perm=(1, 2, 0))


def rows(start: int, *out_shape: int) -> Layout:
    """Rows start .. start + prod(out_shape) of a fused Linear [out, in] ->
    [in, *out_shape] (Phi-3's qkv_proj and gate_up_proj)."""
    base = in_out(*out_shape)
    return Layout(split=base.split[:1] + ((-1,),), perm=base.perm, crop=(0, start))


def conv1d(*out_shape: int, pick: int | None = None) -> Layout:
    """GPT-2 Conv1D weight [in, out] -> [in, *out_shape]; with `pick`, the
    out axis is [3, *out_shape] (fused q|k|v) and one of the three is kept."""
    if pick is None:
        return Layout(split=((-1,), tuple(out_shape)))
    return Layout(split=((-1,), (3, *out_shape)), pick=(1, pick))


def conv1d_bias(*out_shape: int, pick: int) -> Layout:
    """GPT-2 fused bias [3 * prod(out_shape)] -> out_shape, one of q|k|v."""
    return Layout(split=((3, *out_shape),), pick=(0, pick))


def reshape(*shape: int) -> Layout:
    """A 1-D bias [prod(shape)] -> shape."""
    return Layout(split=(tuple(shape),))


def neox_qkv(which: int, heads: int, head_dim: int) -> Layout:
    """query_key_value [H*(q|k|v)*hd, D] (rows per head: q, k, v) -> [D, H, hd]."""
    return Layout(split=((heads, 3, head_dim), (-1,)), pick=(1, which), perm=(2, 0, 1))


def neox_qkv_bias(which: int, heads: int, head_dim: int) -> Layout:
    return Layout(split=((heads, 3, head_dim),), pick=(1, which))
