"""A call repeated from a thread while a block runs: the heartbeats of ranks and sweep trials."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def repeating(call: Callable[[], None], every: float, name: str) -> Iterator[None]:
    """``call()`` at once and then every ``every`` seconds, from a daemon thread named ``name``,
    until the block ends (the thread is joined before the block's exit returns)."""
    stop = threading.Event()

    def run() -> None:
        call()
        while not stop.wait(every):
            call()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
