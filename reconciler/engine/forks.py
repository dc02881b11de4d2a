"""What a process forked from the agent inherits of its signal handling: nothing.

Libraries fork children inside the agent's process without exec'ing: pyroute2 forks one for
every network namespace it enters (NetNS, netns.create) and ends it with SIGTERM. Such a
child is a copy of the agent, Python signal handlers included. Left alone, the agent's
SIGTERM handler ran in the child: it logged "signal SIGTERM: stopping" and stopped the
file watch, whose inotify instance the child shares with the agent (removing a watch
through a shared instance removes it for both), so the agent stopped seeing its source.

`default_signals_in_children(signals)` makes every fork done through Python (os.fork,
multiprocessing) give the child the default disposition for `signals`: the SIGTERM
that ends it ends it, as the library expects. The signals are blocked in the forking
thread from just before the fork until the child has reset them, so one sent right
after the fork is delivered to the child's default action, never to the inherited
handler. Processes started by exec (subprocess) get default dispositions from the
kernel anyway.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from collections.abc import Iterable

_state = threading.local()  # the forking thread's signal mask, between the fork hooks
_lock = threading.Lock()
_signals: frozenset[signal.Signals] = frozenset()
_faulthandler_signals: frozenset[signal.Signals] = frozenset()
_registered = False


def default_signals_in_children(
    signals: Iterable[signal.Signals], *, faulthandler_signals: Iterable[signal.Signals] = ()
) -> None:
    """From now on, a child forked by this process starts with `signals` at their default
    action and the faulthandler dumps on `faulthandler_signals` removed. Idempotent; the
    signals accumulate over calls."""
    global _signals, _faulthandler_signals, _registered
    with _lock:
        _signals = _signals | frozenset(signals)
        _faulthandler_signals = _faulthandler_signals | frozenset(faulthandler_signals)
        if not _registered:  # hooks cannot be unregistered: once per process
            os.register_at_fork(
                before=_before, after_in_parent=_in_parent, after_in_child=_in_child
            )
            _registered = True


def _before() -> None:
    if _signals:
        _state.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _signals)


def _in_parent() -> None:
    mask = getattr(_state, "mask", None)
    if mask is not None:
        _state.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _in_child() -> None:
    # the thread that forked is the child's main thread, where signal.signal is allowed
    for signum in _signals:
        signal.signal(signum, signal.SIG_DFL)
    for signum in _faulthandler_signals:
        faulthandler.unregister(signum)
    mask = getattr(_state, "mask", None)
    if mask is not None:
        _state.mask = None
        # a signal that arrived meanwhile is delivered now, to the default action
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
