"""A drain stops its daemons once they catch SIGTERM (bench/drain.py), not after a fixed
wait: ``catches_signal`` reads the kernel's account of a process's handlers."""

from __future__ import annotations

import os
import signal

from bench.infra import catches_signal


def test_catches_signal_sees_a_handler_installed_and_removed() -> None:
    me = os.getpid()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert not catches_signal(me, signal.SIGTERM)  # the default action: SIGTERM kills
        signal.signal(signal.SIGTERM, lambda *_: None)
        assert catches_signal(me, signal.SIGTERM)
        assert catches_signal(me, signal.SIGINT)  # Python's own KeyboardInterrupt handler
        assert not catches_signal(me, signal.SIGUSR2)  # the neighbours' bits are not read
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert not catches_signal(me, signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_catches_signal_is_false_for_a_process_that_is_gone() -> None:
    assert not catches_signal(2**22 + 12345, signal.SIGINT)
