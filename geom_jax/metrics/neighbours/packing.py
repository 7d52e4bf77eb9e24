"""Packed uint64 sort keys: monotone float32 bits << 32 | column, so that one
integer sort orders by (value, column) and ties go to the lower column."""

import sys

import numpy as np

_LOW32 = np.uint64(0xFFFFFFFF)


def ordered_bits(vals):
    """uint32 of float32 vals, monotone in the value (negatives included, no NaN)."""
    bits = vals.view(np.uint32)
    flip = (bits.view(np.int32) >> 31).view(np.uint32)
    flip |= np.uint32(0x80000000)
    flip ^= bits
    return flip


def unpack_values(high):
    """Inverse of ordered_bits."""
    bits = high.astype(np.uint32)
    flip = (~bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(0x80000000)
    return (bits ^ flip).view(np.float32)


def pack(vals, cols):
    """uint64 keys whose order is the (value, column) order.

    Keys and squared distances never hold -0.0 (x - x and sums of squares
    round to +0.0), so bit order matches the float order, ties included.
    """
    packed = ordered_bits(vals).astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= cols.view(np.uint64) if cols.dtype == np.int64 else cols.astype(np.uint64)
    return packed


def low_int32(packed):
    """The column (low 32 bits) of packed keys, as int32."""
    if sys.byteorder == "little":
        return packed.view(np.uint32)[..., 0::2].astype(np.int32)
    return (packed & _LOW32).astype(np.uint32).view(np.int32)
