"""Host-side random streams, one per purpose, derived from the run seed.

Drawing everything on the host keeps CPU and GPU runs bit-identical, and separate streams keep e.g. the
augmentation draws from shifting when dropout is switched on.
"""

from __future__ import annotations

import json

import numpy as np

STREAMS = ("init", "shuffle", "dropout", "augment")


class RngStreams:
    """Independent NumPy generators (PCG64) spawned from `SeedSequence(seed)`."""

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        children = np.random.SeedSequence(self.seed).spawn(len(STREAMS))
        for name, child in zip(STREAMS, children, strict=True):
            setattr(self, name, np.random.Generator(np.random.PCG64(child)))

    init: np.random.Generator
    shuffle: np.random.Generator
    dropout: np.random.Generator
    augment: np.random.Generator

    def state_dict(self) -> dict[str, str]:
        """Each generator's bit-generator state as a JSON string (storable in an npz without pickle)."""
        return {name: json.dumps(getattr(self, name).bit_generator.state) for name in STREAMS}

    def load_state_dict(self, state: dict[str, str]) -> None:
        missing = [name for name in STREAMS if name not in state]
        if missing:
            raise ValueError(f"RNG state lacks streams: {', '.join(missing)}")
        for name in STREAMS:
            getattr(self, name).bit_generator.state = json.loads(str(state[name]))
