"""Shared pieces of the benchmark scripts: device peak FLOP/s for MFU."""

from __future__ import annotations

# Dense bfloat16 peak of one chip, TFLOP/s (vendor datasheets).
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def peak_flops(device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of ``device`` (bf16 datasheet value), or None if unknown."""
    if override_tflops:
        return override_tflops * 1e12
    kind = getattr(device, "device_kind", "").lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name.lower() in kind:
            return tflops * 1e12
    return None
