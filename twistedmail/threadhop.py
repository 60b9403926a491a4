"""The hop of blocking work (Maildir, index and account store I/O) to a thread and back.

Twisted's C{deferToThreadPool} wraps each call in two context frames, hands it through the
thread pool's C{Team} (a coordinator, a lock worker and a C{queue.Queue} whose
C{Condition.notify} is Python code) and back: about 40 microseconds of CPU per hop here,
and under imaptest's load (two or three hops per IMAP command) 11% of the GIL's samples
(issue 10).  L{ThreadHop} does the same job with a C{queue.SimpleQueue} (C code) read by
a fixed set of threads, each handing its result back with C{reactor.callFromThread}:
about 10 microseconds.  What callers see is unchanged: a Deferred that fires on the
reactor thread with the result, or fails with the exception the call raised.

The threads start at the first call (after twistd's fork and privilege drop, as Twisted's
own pool does), again in a child process that forked after they had started (the threads
of the parent are not in it), and stop at the reactor's shutdown once the work queued
before has run (as Twisted's pool is stopped, during shutdown).  A reactor without threads
(the tests' L{twistedmail.testing.SynchronousReactor}) keeps its own C{getThreadPool()}.
"""

from __future__ import annotations

import os
import threading
import weakref
from queue import SimpleQueue
from typing import Any, Callable

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

THREADS = 10
"""As many as Twisted's reactor pool has at most (C{ThreadPool(0, 10)})."""

_STOP = None


class ThreadHop:
    """C{hop(f, *args)}: C{f(*args)} in one of C{size} threads; a Deferred of its result."""

    def __init__(self, reactor: Any, size: int = THREADS, name: str = "twistedmail-io") -> None:
        self.reactor, self.size, self.name = reactor, size, name
        self._threaded = IReactorThreads.providedBy(reactor)
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        if self._threaded:
            _HOPS.add(self)  # (weakly: a hop nobody holds is freed)

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if not self._threaded:
            return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)
        if not self._threads:
            if self._stopped:
                return fail(RuntimeError("the thread hop has stopped (reactor shutdown)"))
            self._start()
        d: Deferred[Any] = Deferred()
        self._queue.put((d, f, args))
        return d

    def _start(self) -> None:
        self._threads = [
            threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            for i in range(self.size)
        ]
        for t in self._threads:
            t.start()
        self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def _work(self) -> None:
        get, call = self._queue.get, self.reactor.callFromThread
        while True:
            job = get()
            if job is _STOP:
                return
            d, f, args = job
            try:
                result = f(*args)
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)
            job = d = f = args = result = None  # nothing of a call stays alive while waiting

    def stop(self) -> None:
        """Let the work queued so far run, then end the threads and wait for them."""
        self._stopped = True
        running, self._threads = self._threads, []
        for _ in running:
            self._queue.put(_STOP)
        for t in running:
            t.join()

    def _forget_threads(self) -> None:
        """In a forked child: the parent's threads are not here; start anew at the next call
        (with a new queue: the parent's may hold jobs, or have been locked, at the fork)."""
        self._queue = SimpleQueue()
        self._threads = []


_HOPS: weakref.WeakSet[ThreadHop] = weakref.WeakSet()
"""The hops of this process, for the fork handler (one for all, registered once: one per
hop kept every hop, and its reactor, alive for the life of the process)."""


def _forget_all_threads() -> None:
    for hop in list(_HOPS):
        hop._forget_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_threads)
