"""What each accelerator offers, by jax `device_kind`: dense bf16 peak FLOP/s (for MFU) and HBM bytes
per chip (for the AOT memory report). Vendor spec sheets."""

from __future__ import annotations

# v5p reports itself as "TPU v5", v5e as "TPU v5 lite": the longest matching prefix wins.
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5": 459e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
}
HBM_BYTES = {
  "TPU v4": 32 << 30,
  "TPU v5 lite": 16 << 30,
  "TPU v5": 95 << 30,
  "TPU v5p": 95 << 30,
  "TPU v6 lite": 32 << 30,
  "NVIDIA H100": 80 << 30,
  "NVIDIA H200": 141 << 30,
  "NVIDIA A100": 80 << 30,
}


def _lookup(table: dict, device_kind: str):
  names = [n for n in table if device_kind.startswith(n)]
  return table[max(names, key=len)] if names else None


def device_peak(device_kind: str) -> float | None:
  """Peak FLOP/s of a jax device_kind string, or None when unknown (e.g. CPU)."""
  return _lookup(PEAK_FLOPS, device_kind)


def device_hbm(device_kind: str) -> int | None:
  """HBM bytes per chip of a jax device_kind string, or None when unknown."""
  return _lookup(HBM_BYTES, device_kind)
