"""Input checks: static shape checks at trace time, value checks on concrete arrays.

Every failure is a ValueError that names the argument and, for value checks,
the offending prompt (leading batch index) and layer.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.errors import ArgumentError

MIN_VALID_POINTS = 3


def is_concrete(*arrays):
    """True when no argument is a tracer (values can be inspected on the host)."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


_DLPACK_PLATFORMS = {1: "cpu", 2: "gpu", 10: "gpu"}
"""DLPack device types (kDLCPU, kDLCUDA, kDLROCM) -> the jax platform that shares them."""


def as_array(x, name):
    """``x`` as NumPy or JAX reads it, without a copy where its memory allows.

    An array object with ``__dlpack__`` other than NumPy's and JAX's (a torch tensor, a
    CuPy array) on JAX's default device goes through :func:`jax.dlpack.from_dlpack`,
    which shares its memory (jax copies only a buffer it cannot alias, e.g. one not
    aligned as XLA needs); one on another device, or one DLPack refuses (a torch tensor
    that requires grad), through ``np.asarray`` (``__array__``), as is anything without a
    shape (nested lists). Everything else (NumPy and JAX arrays, tracers, shape
    descriptions such as ``jax.ShapeDtypeStruct``) is returned as it is.

    Raises:
      ValueError: naming ``name`` when the object cannot be read as an array.
    """
    if isinstance(x, (np.ndarray, jax.Array, jax.core.Tracer)):
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        try:
            kind, index = x.__dlpack_device__()
            device = jax.devices()[0]
            platform = _DLPACK_PLATFORMS.get(int(kind))
            if platform == device.platform and (
                platform == "cpu" or int(index) == device.local_hardware_id
            ):
                return jax.dlpack.from_dlpack(x)
        except (BufferError, TypeError, ValueError, RuntimeError):
            pass
    elif hasattr(x, "shape"):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} cannot be read as an array: {e}") from None


def check_points(x, name, min_rank=2, layout="[..., N, D] point clouds"):
    """Rejects wrong rank and non-float dtypes without moving x to a device;
    returns x (read by :func:`as_array` when it is neither a NumPy nor a JAX array)."""
    x = as_array(x, name)
    if len(x.shape) < min_rank:
        raise ValueError(
            f"{name} must have rank >= {min_rank} ({layout}), got shape {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def as_points(x, name, min_rank=2):
    """float32 array [..., N, D]; rejects wrong rank and non-float dtypes."""
    return jnp.asarray(check_points(x, name, min_rank), jnp.float32)


def flat_clouds(x, valid):
    """x [..., N, D] and valid [..., N] with the leading axes flattened: (x [B, N, D]
    zero at invalid points, valid [B, N], the leading shape)."""
    batch, (n, d) = x.shape[:-2], x.shape[-2:]
    vf = valid.reshape((-1, n))
    return jnp.where(vf[..., None], x.reshape((-1, n, d)), 0.0), vf, batch


def as_mask(mask, batch_shape, n, name="mask"):
    """Bool mask broadcast to batch_shape + (N,), or None."""
    if mask is None:
        return None
    if isinstance(mask, (int, float, np.integer, np.floating)) and not isinstance(mask, bool):
        raise ValueError(
            f"{name} must be a boolean array [..., N], got the number {mask!r} (options such as "
            "k, max_k, range_max are keyword-only: f(x, mask=None, *, ...))"
        )
    mask = as_array(mask, name)
    if len(mask.shape) == 0 or mask.shape[-1] != n:
        raise ValueError(f"{name} must have shape [..., N] with N = {n}, got {tuple(mask.shape)}")
    try:
        np.broadcast_shapes(tuple(mask.shape), tuple(batch_shape) + (n,))
    except ValueError:
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to {tuple(batch_shape) + (n,)}"
        ) from None
    if mask.dtype != bool:
        if not is_concrete(mask):
            raise ValueError(f"{name} must be boolean, got dtype {mask.dtype}")
        check_mask_dtype(mask, name)
    return jnp.broadcast_to(jnp.asarray(mask, bool), tuple(batch_shape) + (n,))


def n_scales(n, range_max):
    """S = floor(log2(min(N, range_max))), the number of GRIDE scales."""
    return int(math.floor(math.log2(min(n, range_max))))


MAX_RANGE = 256
"""Default cap of GRIDE's range on a prompt's token cloud (the paper's range)."""
MAX_DATASET_RANGE = 2**13
"""Default cap on dataset-scale clouds (Cheng et al. read the plateau up to 2**13)."""


def default_range_max(n, cap=MAX_RANGE):
    """The largest GRIDE range N points support, capped: min(cap, N - 1).

    Every neighbour rank 2**s <= range_max then exists (2**S <= N - 1).
    """
    return max(2, min(cap, int(n) - 1))


def resolve_range_max(n, range_max, cap=MAX_RANGE):
    """range_max, or default_range_max(n, cap) when it is None."""
    return default_range_max(n, cap) if range_max is None else range_max


def check_range_max(n, range_max, name="range_max"):
    range_max = resolve_range_max(n, range_max)
    if not isinstance(range_max, (int, np.integer)) or range_max < 2:
        raise ArgumentError(
            "{" + name + "} must be an integer >= 2, got {value!r}", name, value=range_max
        )
    if n < MIN_VALID_POINTS:
        raise ValueError(f"GRIDE needs N >= {MIN_VALID_POINTS} points per cloud, got N = {n}")
    top = 2 ** n_scales(n, range_max)
    if top > n - 1:
        raise ArgumentError(
            "{" + name + "}={value} with N = {n} points asks for neighbour rank {top}, but a "
            "point has only {neighbours} neighbours; use {" + name + "} <= {half} or more points",
            name,
            value=range_max,
            n=n,
            top=top,
            neighbours=n - 1,
            half=top // 2,
        )


def check_max_k(n, max_k, name="max_k"):
    if not isinstance(max_k, (int, np.integer)) or max_k < 1:
        raise ArgumentError(
            "{" + name + "} must be an integer >= 1, got {value!r}", name, value=max_k
        )
    check_neighbours_fit(n, max_k, name)


def is_number(value):
    """Whether value is a real Python or NumPy number (a bool is not)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_open_unit(value, name, closed_top=False):
    """Refuses (naming ``name``) a value outside (0, 1), or (0, 1] with closed_top."""
    ok = is_number(value) and 0.0 < value and (value <= 1.0 if closed_top else value < 1.0)
    if not ok:
        interval = "(0, 1]" if closed_top else "(0, 1)"
        raise ArgumentError(
            "{" + name + "} must be a number in {interval}, got {value!r}",
            name,
            interval=interval,
            value=value,
        )


def check_choice(value, name, choices):
    """Refuses (naming ``name``) a value not among ``choices``."""
    if value not in choices:
        raise ArgumentError(
            "{" + name + "} must be one of {choices}, got {value!r}",
            name,
            choices=choices,
            value=value,
        )


def check_flag(value, name):
    """value as a bool, refused (naming ``name``) unless a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentError(
            "{" + name + "} must be True or False, got {value!r}", name, value=value
        )
    return bool(value)


def check_int(value, name, lo):
    """value as an int, refused (naming ``name``) unless an integer (not a bool) >= lo."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
        raise ArgumentError(
            "{" + name + "} must be an integer >= {lo}, got {value!r}", name, lo=lo, value=value
        )
    return int(value)


def check_neighbours_fit(n, k, name):
    """k neighbours of each point need clouds of at least k + 1 points (ArgumentError
    naming ``name``)."""
    if k > n - 1:
        raise ArgumentError(
            "{" + name + "}={value} needs N >= {need} points per cloud, got N = {n}",
            name,
            value=k,
            need=k + 1,
            n=n,
        )


def check_discard_fraction(value, name="discard_fraction"):
    if not 0.0 <= float(value) < 1.0:
        raise ArgumentError("{" + name + "} must be in [0, 1), got {value!r}", name, value=value)


def check_sizes(n, *, range_max=None, max_k=32, gride=True):
    """Static check that clouds of N tokens support range_max and max_k (ValueError if not).

    range_max None is default_range_max(n); gride False skips its check and
    max_k None skips the other (an observable set that does not use them).
    Returns the range_max that applies.
    """
    if max_k is not None:
        check_max_k(n, max_k)
    if gride:
        check_range_max(n, range_max)
    return resolve_range_max(n, range_max)


def _where(index, batch_shape, kind):
    """Human-readable location of a flat index into batch_shape."""
    pos = tuple(int(p) for p in np.unravel_index(index, batch_shape)) if batch_shape else ()
    if kind == "cloud":
        return f"cloud {pos}"
    if kind == "prompt":
        return f"prompt {pos}"
    return f"prompt {pos[:-1]}, layer {pos[-1]}"


def check_finite(x, valid, name, kind="cloud"):
    """Raise if x [..., N, D] has a non-finite value at a valid point."""
    x = np.asarray(x)
    batch_shape = x.shape[:-2]
    n = x.shape[-2]
    valid = np.broadcast_to(np.asarray(valid, bool), x.shape[:-1])
    bad = (~np.all(np.isfinite(x), axis=-1) & valid).reshape(-1, n)
    if bad.any():
        flat = int(np.flatnonzero(bad.any(axis=-1))[0])
        token = int(np.flatnonzero(bad[flat])[0])
        raise ValueError(
            f"{name} has non-finite values at {_where(flat, batch_shape, kind)}, token {token}"
        )


def check_counts(valid, name="mask", *, max_k=None, kind="cloud", min_valid=MIN_VALID_POINTS):
    """Raise if a row of valid [..., N] has < min_valid points (or <= max_k)."""
    valid = np.asarray(valid, bool)
    batch_shape = valid.shape[:-1]
    counts = valid.sum(axis=-1).reshape(-1)
    if counts.size == 0:
        return
    flat = int(np.argmin(counts))
    if counts[flat] < min_valid:
        raise ValueError(
            f"{name} has fewer than {min_valid} valid points ({int(counts[flat])}) at "
            f"{_where(flat, batch_shape, kind)}"
        )
    if max_k is not None and counts[flat] < max_k + 1:
        raise ValueError(
            f"{name}: max_k={max_k} needs >= {max_k + 1} valid points, but "
            f"{_where(flat, batch_shape, kind)} has {int(counts[flat])}"
        )


def check_mask_dtype(mask, name="mask"):
    m = np.asarray(mask)
    if m.dtype != bool and not np.all(np.isin(m, (0, 1))):
        raise ValueError(f"{name} must be boolean (or 0/1), got dtype {m.dtype}")


def validate_hidden(
    hidden, mask=None, *, range_max=None, max_k=32, gride=True, allow_non_finite=False
):
    """Check a hidden-state stack [..., L, N, D] and its mask [..., N] for layer_geometry.

    Shape checks always run; value checks (finite values at valid tokens,
    at least max(3, max_k + 1) valid tokens per prompt) run when the arrays
    are concrete. Raises ValueError naming the argument and the offending
    prompt / layer. The pipeline can call this on host arrays before compute.
    With allow_non_finite (as layer_geometry does), non-finite values pass:
    layer_geometry reports NaN for those clouds instead.
    """
    hidden = check_points(hidden, "hidden", 3, "[..., L, N, D]")
    n = hidden.shape[-2]
    prompt_shape = tuple(hidden.shape[:-3])
    check_sizes(n, range_max=range_max, max_k=max_k, gride=gride)
    if mask is not None:
        if not hasattr(mask, "shape"):
            mask = np.asarray(mask)
        if tuple(mask.shape) != prompt_shape + (n,):
            raise ValueError(
                f"mask must have shape {prompt_shape + (n,)} (one row per prompt, shared by all "
                f"layers), got {tuple(mask.shape)}"
            )
    if mask is not None and is_concrete(mask):
        check_mask_dtype(mask)
        check_counts(np.asarray(mask, bool), "mask", max_k=max_k, kind="prompt")
    if is_concrete(hidden, mask) and not allow_non_finite:
        valid = np.ones(prompt_shape + (n,), bool) if mask is None else np.asarray(mask, bool)
        check_finite(hidden, valid[..., None, :], "hidden", kind="layer")


def validate_points(x, mask, name="x", *, max_k=None, min_valid=MIN_VALID_POINTS):
    """Value checks for the single-cloud functions (x [..., N, D], mask [..., N]
    from `as_mask`): valid-point counts, then finite values at valid points."""
    valid = np.asarray(mask) if mask is not None and is_concrete(mask) else None
    if valid is not None:
        check_counts(valid, "mask", max_k=max_k, min_valid=min_valid)
    if is_concrete(x, mask):
        check_finite(x, np.ones(x.shape[:-1], bool) if mask is None else valid, name)
