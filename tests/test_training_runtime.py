"""training/runtime.py: one branch for every process (``agree``), workers that leave signals to the main process,
and ``StopSignal``: the first SIGTERM/SIGINT asks for a checkpoint and a stop, a second SIGINT interrupts."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from vanillanet.training.runtime import StopSignal, agree, ignore_stop_signals
from vanillanet.util.devices import DistInfo


def test_one_process_agrees_with_itself():
    assert agree(DistInfo(), torch.device("cpu"), True, False) == (True, False)
    assert agree(DistInfo(), torch.device("cpu")) == ()


def test_agree_is_an_or_across_processes(monkeypatch):
    """With a process group the flags are all-reduced with MAX: one process that wants to stop stops them all."""
    others = torch.tensor([0.0, 1.0, 0.0])

    def all_reduce(t, op):
        assert op == torch.distributed.ReduceOp.MAX
        t.copy_(torch.maximum(t, others))

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    got = agree(DistInfo(world_size=2), torch.device("cpu"), True, False, False)
    assert got == (True, True, False)


def test_sigterm_asks_for_a_stop_and_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in StopSignal.SIGNALS}
    with StopSignal() as stop:
        assert not stop.requested and stop.exit_code == 128
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM and stop.exit_code == 143
    assert {sig: signal.getsignal(sig) for sig in StopSignal.SIGNALS} == before


def test_a_second_sigint_interrupts_at_once():
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt, match="^$"):
            os.kill(os.getpid(), signal.SIGINT)


def test_request_without_a_signal_and_outside_the_main_thread():
    seen = []

    def in_thread():
        with StopSignal() as stop:  # no handlers can be installed here; request still works
            stop.request(signal.SIGTERM)
            seen.append((stop.requested, stop._previous))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [(True, {})]


def test_data_workers_ignore_stop_signals():
    before = {sig: signal.getsignal(sig) for sig in StopSignal.SIGNALS}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in StopSignal.SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the test process lives on
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
