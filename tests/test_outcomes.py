"""How a run ends: failed after server.max_failed_rounds all-failed rounds,
interrupted after the current round on SIGINT/SIGTERM."""
from __future__ import annotations

import os
import signal

import pytest

from fedagg.outcomes import FailureWatch, Interrupts, RunFailed


def test_failure_watch_stops_after_k_all_failed_rounds_naming_the_error_once():
    w = FailureWatch(3)
    err = {0: "client error: ValueError: Invalid momentum value: -0.5", 1: "client error: same"}
    w.observe(1, 2, 0, err)
    w.observe(2, 0, 0, {})  # nobody asked: neither counts nor resets
    w.observe(3, 2, 0, err)
    with pytest.raises(RunFailed) as e:
        w.observe(4, 2, 0, err)
    msg = str(e.value)
    assert "3 consecutive rounds" in msg and "max_failed_rounds=3" in msg
    assert msg.count("Invalid momentum value") == 1


def test_failure_watch_resets_on_any_reply_and_ignores_rejections():
    w = FailureWatch(2)
    w.observe(1, 2, 0, {0: "a", 1: "b"})
    w.observe(2, 2, 1, {1: "b"})  # one reply: progress
    w.observe(3, 2, 0, {0: "a", 1: "b"})
    w.observe(4, 2, 0, {0: "a"})  # one failed, one rejected: not "every client failed"
    w.observe(5, 2, 0, {0: "a", 1: "b"})
    with pytest.raises(RunFailed):
        w.observe(6, 2, 0, {0: "a", 1: "b"})
    never = FailureWatch(0)
    for r in range(1, 20):
        never.observe(r, 2, 0, {0: "a", 1: "b"})


def test_first_signal_requests_a_stop_second_aborts():
    seen: list[str] = []
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    with Interrupts(on_first=seen.append) as it:
        assert it.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert it.requested == "SIGTERM" and seen == ["SIGTERM"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_nobody_asked_warns_once_per_run():
    from fedagg.outcomes import NobodyAsked

    w = NobodyAsked()
    assert w.observe(1, 3) is None
    msg = w.observe(2, 0)
    assert "round 2 asked no client" in msg and "once per run" in msg
    assert w.observe(3, 0) is None  # the same stretch
    assert w.observe(4, 4) is None
    assert w.observe(5, 0) is None  # a later stretch: still said only once


def test_early_round_warning_points_to_the_claim_preset():
    from fedagg.outcomes import early_round_warning

    msg = early_round_warning("fedau", "bernoulli", None)
    assert "participants/N" in msg and "claim_fedau" in msg
    assert early_round_warning("fedau", "full", None) is None  # everyone takes part: no shrinkage
    assert early_round_warning("fedavg", "bernoulli", None) is None
    assert early_round_warning("fedau", "bernoulli", 10.0) is None  # a tuned server lr


def test_the_tours_bernoulli_stragglers_run_says_when_nobody_was_asked(tmp_path, caplog):
    """The README tour's ``participation=bernoulli heterogeneity=stragglers``
    asks nobody in rounds 1-2; the run now says so (once), and FedAU under
    Bernoulli participation points to the claim preset's learning rates."""
    import logging

    from fedagg_testing import compose

    from fedagg.experiment import run

    with caplog.at_level(logging.WARNING, logger="fedagg"):
        run(compose("runtime=inprocess", "model=mlp", "rounds=3", "participation=bernoulli",
                    "heterogeneity=stragglers"), tmp_path / "a")
    said = [r.getMessage() for r in caplog.records]
    assert sum("asked no client" in m for m in said) == 1 and any(m.startswith("round 1 asked no client") for m in said)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedagg"):
        run(compose("runtime=inprocess", "dataset=digits", "model=mlp", "rounds=1", "aggregator=fedau",
                    "participation=bernoulli", "participation.p_bar=0.3"), tmp_path / "b")
    assert any("claim_fedau" in r.getMessage() for r in caplog.records)
