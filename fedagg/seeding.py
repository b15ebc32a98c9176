"""Named random streams.

Every random draw in fedagg comes from a generator derived from
``(seed, purpose, *keys)`` -- e.g. ``rng(seed, "train", round, client)`` -- so
that the order in which Ray schedules clients, the number of workers or a
resume from a checkpoint can never change a result.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def stream_key(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit integer that identifies one named stream."""
    text = ":".join([str(int(seed)), purpose, *(str(int(k)) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """numpy Generator for the stream ``(seed, purpose, *keys)``."""
    return np.random.default_rng(stream_key(seed, purpose, *keys))


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """torch CPU Generator for the stream ``(seed, purpose, *keys)``."""
    g = torch.Generator()
    g.manual_seed(stream_key(seed, purpose, *keys))
    return g
