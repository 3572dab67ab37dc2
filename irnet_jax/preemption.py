"""Preemption: SIGTERM (a TPU or cloud preemption, a job scheduler's stop) asks the loop to save a
checkpoint and return after the call in flight."""

import contextlib
import dataclasses
import signal
from collections.abc import Iterator

# Set by a command line to a list its own early SIGTERM handler appends to (train.py installs one
# before it imports anything heavy): a SIGTERM during start-up is then answered like any other.
EARLY_REQUESTS: list = []


@dataclasses.dataclass
class Preemption:
    """Set by SIGTERM: the loop saves a checkpoint and returns."""

    requested: bool = False


@contextlib.contextmanager
def handle_sigterm() -> Iterator[Preemption]:
    """A ``Preemption`` flag set by SIGTERM while the block runs (the previous handler is restored).
    Outside the main thread (some notebook kernels) signals cannot be handled: the flag stays unset."""
    preemption = Preemption(requested=bool(EARLY_REQUESTS))
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(preemption, "requested", True))
    except ValueError:
        yield preemption
        return
    try:
        if EARLY_REQUESTS:  # a SIGTERM between the early handler's check and this one's installation
            preemption.requested = True
        yield preemption
    finally:
        signal.signal(signal.SIGTERM, previous)
