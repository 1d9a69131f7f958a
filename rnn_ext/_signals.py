"""SIGINT and SIGTERM held back while state changes, so they never land half-way.

A Python signal handler runs between two bytecodes of the main thread.  So a
Ctrl-C (KeyboardInterrupt) can land between the update of one parameter and
the next, or between an optimizer step and the step counter, and SIGTERM's
default action ends the process in the middle of writing a file.  Inside
``deferred()`` both signals are only recorded.  When the block ends the
previous handlers are back and each recorded signal is raised again, so it
acts (KeyboardInterrupt, termination, or a command line's own handler) at the
first point where the state is whole.

Only the main thread receives Python signal handlers, so in other threads
``deferred()`` does nothing: no signal can interrupt them there.  A signal
that is ignored (SIG_IGN), or whose handler was not set from Python, is left
alone.

Example
-------
>>> with deferred():
...     optimizer.step(grads)      # a Ctrl-C here acts after the block
...     trainer.step += 1
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

__all__ = ["SIGNALS", "deferred"]

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class deferred:
    """Context manager: SIGINT and SIGTERM arriving inside the block act at its end."""

    def __init__(self) -> None:
        self._old: dict[int, object] = {}
        self._got: list[int] = []

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._got:
            self._got.append(signum)

    def __enter__(self) -> deferred:
        self._old, self._got = {}, []
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            for s in SIGNALS:
                old = signal.getsignal(s)
                if old is None or old == signal.SIG_IGN:
                    continue
                # remembered before the swap, so a handler that raises right
                # after it still finds its way back in _restore
                self._old[s] = old
                signal.signal(s, self._record)
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self, items: list | None = None) -> None:
        # try/finally per signal: a restored handler that raises (the default
        # SIGINT handler, for a Ctrl-C arriving now) must not leave the others
        # swapped
        if items is None:
            items, self._old = list(self._old.items()), {}
        if not items:
            return
        try:
            signal.signal(*items[0])
        finally:
            self._restore(items[1:])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
        got, self._got = self._got, []
        for s in got:
            signal.raise_signal(s)
