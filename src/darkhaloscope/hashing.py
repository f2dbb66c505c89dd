"""Deterministic, order-independent pseudo-random draws from stable identifiers.

Every per-sample random quantity in the pipeline is a pure function of
(seed, stable id, name), so it does not depend on row order, partitioning or
the number of workers. BLAKE2b is used because it is in the standard library,
fast, and stable across platforms and Python versions.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
from scipy.special import ndtri

_TWO64 = float(2**64)


def hash_u64(*parts: object) -> int:
    """64-bit unsigned integer hash of the string forms of ``parts``."""
    key = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def hash_int63(*parts: object) -> int:
    """Non-negative int64-safe hash (63 bits), used for stable ids."""
    return hash_u64(*parts) >> 1


def uniform(*parts: object) -> float:
    """A uniform draw in [0, 1) from the hash of ``parts`` (53-bit resolution)."""
    return (hash_u64(*parts) >> 11) / float(2**53)


def uniforms(seed: int, ids: Iterable[object], name: str) -> np.ndarray:
    """Vector of uniform draws in [0, 1), one per id, for the quantity ``name``."""
    return np.fromiter((uniform(seed, i, name) for i in ids), dtype=np.float64)


def normal(*parts: object) -> float:
    """A standard-normal draw from the hash of ``parts`` (inverse-CDF transform)."""
    u = uniform(*parts)
    # keep strictly inside (0, 1) so ndtri stays finite
    u = min(max(u, 1e-16), 1.0 - 1e-16)
    return float(ndtri(u))
