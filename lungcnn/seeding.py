"""Seeds derived from a run's seed and a position (epoch, draw), never from how long a process has run.

A run resumed from a checkpoint starts a fresh process: any random stream that was merely *advanced*
by the epochs before the crash would restart from its beginning. Deriving every epoch's randomness
from ``(seed, epoch)`` makes an interrupted-and-resumed run draw exactly what an uninterrupted one does.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys, e.g. ``derive_seed(seed, epoch)`` (statistically independent streams)."""
    return int(np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(1)[0] >> 1)
