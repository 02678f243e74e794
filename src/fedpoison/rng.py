"""Independent, reproducible random streams derived from one run seed.

Each part of a run (data split, choice of compromised workers, local SGD batches, worker
sampling, attack noise, poisoned-iteration schedule, validation set, the server's own
randomness) draws from its own
stream, so changing one part (e.g. the attack) leaves the others' draws unchanged: a run
with and without an attack share the same split, compromised workers and batches.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = ("split", "compromised", "init", "train", "sample", "attack", "schedule", "validation",
           "subset", "server")


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU torch.Generator for ``stream`` of run ``seed``."""
    sid = STREAMS.index(stream)
    state = np.random.SeedSequence([seed, sid]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g
