"""ThreadHop: blocking work in a thread, its result back on the reactor thread (issue 10)."""

from __future__ import annotations

import os
import threading
from queue import SimpleQueue
from typing import Any, Callable

import pytest
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from twistedmail.testing import SynchronousReactor
from twistedmail.threadhop import ThreadHop


@implementer(IReactorThreads)
class ThreadedReactor:
    """What ThreadHop uses of a reactor: callFromThread (queued for the test's thread to
    run, as the reactor thread would) and the shutdown trigger."""

    def __init__(self) -> None:
        self.calls: SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = SimpleQueue()
        self.triggers: list[tuple[str, str, Callable[[], Any]]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> None:
        self.triggers.append((phase, event, f))

    def run_calls(self, n: int) -> list[str]:
        """Run the next C{n} calls from threads; the name of the thread each came from."""
        names = []
        for _ in range(n):
            f, args = self.calls.get(timeout=30)
            f(*args)
            names.append(threading.current_thread().name)
        return names


def results(d: Any) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_result_comes_back_through_call_from_thread() -> None:
    """The call runs in a hop thread; its result fires the Deferred only from callFromThread."""
    reactor = ThreadedReactor()
    hop = ThreadHop(reactor, size=2)
    got = results(hop(lambda a, b: (a + b, threading.current_thread().name), 2, 3))
    assert got == []  # nothing fires before the reactor thread runs the handed-back call
    reactor.run_calls(1)
    assert got[0][0] == 5
    assert got[0][1].startswith("twistedmail-io-")
    hop.stop()


def test_exception_fails_the_deferred_with_it() -> None:
    """An exception raised by the call fails the Deferred with that exception."""
    reactor = ThreadedReactor()
    hop = ThreadHop(reactor, size=1)

    def boom() -> None:
        raise OSError(28, "No space left on device")

    got = results(hop(boom))
    reactor.run_calls(1)
    assert got[0].check(OSError)
    assert got[0].value.errno == 28
    hop.stop()


def test_stop_runs_queued_work_then_ends_threads() -> None:
    """stop() (the reactor's shutdown trigger) lets the work queued before it run, then joins."""
    reactor = ThreadedReactor()
    hop = ThreadHop(reactor, size=3, name="test-stop")
    done: list[int] = []
    gate = threading.Event()
    ds = [hop(lambda i=i: (gate.wait(30), done.append(i))[1]) for i in range(20)]
    assert [t[:2] for t in reactor.triggers] == [("during", "shutdown")]
    gate.set()
    reactor.triggers[0][2]()  # stop
    assert sorted(done) == list(range(20))
    # its own threads only: servers of other tests in this process keep theirs until exit
    assert not [t for t in threading.enumerate() if t.name.startswith("test-stop-")]
    reactor.run_calls(20)
    assert all(results(d) == [None] for d in ds)
    after = results(hop(lambda: 1))  # after shutdown: a failure, not a hang
    assert after[0].check(RuntimeError)


def test_many_calls_all_answered_once() -> None:
    """Each of many calls from the reactor thread is answered once, with its own result."""
    reactor = ThreadedReactor()
    hop = ThreadHop(reactor, size=4)
    got = [results(hop(lambda i=i: i * i)) for i in range(500)]
    reactor.run_calls(500)
    assert [g for g in got] == [[i * i] for i in range(500)]
    assert reactor.calls.empty()
    hop.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_after_fork_starts_its_own_threads() -> None:
    """A process forked after the threads started (a worker) gets threads of its own."""
    reactor = ThreadedReactor()
    hop = ThreadHop(reactor, size=2)
    results(hop(lambda: 1))
    reactor.run_calls(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its call must be answered by a thread of its own
        try:
            got = results(hop(lambda: os.getpid()))
            reactor.run_calls(1)
            os.write(w, b"ok" if got == [os.getpid()] else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 10)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    hop.stop()


def test_reactor_without_threads_keeps_its_pool() -> None:
    """The tests' SynchronousReactor still runs the work at once through its own pool."""
    hop = ThreadHop(SynchronousReactor())
    assert results(hop(lambda: threading.current_thread() is threading.main_thread())) == [True]


def test_a_dropped_hop_is_freed() -> None:
    """A ThreadHop nobody holds (its threads stopped or never started) is freed: its
    fork handler does not keep it, and its reactor, alive for the life of the process."""
    import gc
    import weakref

    reactor = ThreadedReactor()
    idle = ThreadHop(reactor, size=1)
    used = ThreadHop(reactor, size=1)
    results(used(lambda: 1))
    reactor.run_calls(1)
    used.stop()
    refs = [weakref.ref(idle), weakref.ref(used)]
    reactor.triggers.clear()  # (a real reactor's shutdown trigger is gone once it ran)
    del idle, used
    gc.collect()
    assert [r() for r in refs] == [None, None]
