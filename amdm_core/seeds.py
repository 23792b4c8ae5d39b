"""Derived seeds, so that members and single-step sampler calls never share noise."""
from __future__ import annotations

_MASK = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed determined by ``seed`` and ``keys``, unrelated to ``seed + n``.

    Chained splitmix64: neighbouring user seeds or keys give unrelated streams, so the
    noise of member 2 at seed s is not the target's noise at seed s + 1.
    """
    value = seed & _MASK
    for key in keys:
        value = _splitmix64(value ^ _splitmix64(key & _MASK))
    return value
