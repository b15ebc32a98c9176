"""How a run ends: failed after server.max_failed_rounds all-failed rounds,
interrupted after the current round on SIGINT/SIGTERM."""
from __future__ import annotations

import os
import signal

import pytest
from fedagg_testing import ROOT

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


def test_failure_watch_resets_on_an_accepted_update_and_counts_rejections():
    w = FailureWatch(2)
    w.observe(1, 2, 0, {0: "a", 1: "b"})
    w.observe(2, 2, 1, {1: "b"})  # one update accepted: progress
    w.observe(3, 2, 0, {0: "a"}, {1: "not finite"})  # one failed, one rejected: nothing accepted, counts
    with pytest.raises(RunFailed) as e:
        w.observe(4, 2, 0, {}, {0: "not finite", 1: "not finite"})  # all rejected: counts
    assert "no update was accepted" in str(e.value) and "client 0 failed: a" in str(e.value)
    never = FailureWatch(0)
    for r in range(1, 20):
        never.observe(r, 2, 0, {0: "a", 1: "b"})


def test_a_run_that_never_accepted_an_update_has_failed():
    w = FailureWatch(3)
    w.observe(1, 2, 0, {}, {1: "'w' contains NaN or Inf", 0: "'w' contains NaN or Inf"})
    w.observe(2, 0, 0, {})
    with pytest.raises(RunFailed, match="no update was accepted in any round .*client 0's update rejected: 'w'"):
        w.finish(2)
    FailureWatch(0, accepted_before=True).finish(5)  # a resumed run whose earlier rounds accepted updates
    ok = FailureWatch(3)
    ok.observe(1, 2, 1, {0: "a"})
    ok.observe(2, 2, 0, {0: "a", 1: "b"})
    ok.finish(2)
    nobody = FailureWatch(3)  # nobody was ever asked: not the clients' failure (warned elsewhere)
    nobody.observe(1, 0, 0, {})
    nobody.finish(1)


def test_a_signal_during_start_up_stops_at_once_then_rounds_finish_first():
    from fedagg.outcomes import rounds_begin

    with Interrupts(startup=True) as it:
        with pytest.raises(KeyboardInterrupt, match="during start-up"):
            os.kill(os.getpid(), signal.SIGTERM)
        it.requested = None
        rounds_begin()
        os.kill(os.getpid(), signal.SIGTERM)  # now: finish the round
        assert it.requested == "SIGTERM"


def test_a_signal_while_ray_starts_is_held_until_it_is_up_and_a_second_goes_through():
    """A KeyboardInterrupt in the middle of ray.init / actor start-up leaves Ray half built. Held, the signal
    stops the run right after Ray is up."""
    from fedagg.outcomes import held_interrupts

    done = []
    with Interrupts(startup=True):
        with pytest.raises(KeyboardInterrupt, match="during start-up"):
            with held_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("ray is up")  # reached: the signal waited
        assert done == ["ray is up"]
        with pytest.raises(KeyboardInterrupt, match="during start-up"):
            with held_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # pressed twice: no waiting for a hung start
                done.append("not reached")
        assert done == ["ray is up"]
    with held_interrupts():  # no active Interrupts: nothing to hold, nothing raised
        pass


@pytest.mark.parametrize("where", ["in a run's start-up", "before the run (config checks, Hydra)"])
def test_ctrl_c_inside_exec_of_a_string_still_exits_130(tmp_path, where):
    """CI saw exit -2 (killed by SIGINT) instead of 130 when Ctrl-C landed while numpy/scipy ran their
    ``exec("from numpy import *")`` on import: CPython marks a plain KeyboardInterrupt leaving exec'd source as
    unhandled and, for ``python -m``, kills itself by SIGINT at exit even after it was caught and sys.exit(130)
    ran. fedagg's handlers raise a subclass, which CPython does not mark. With ``raise KeyboardInterrupt`` in
    Interrupts (or without interrupt_with_subclass) this test gets -2."""
    import subprocess
    import sys

    guard = "Interrupts(startup=True)" if where.startswith("in") else "contextlib.nullcontext()"
    (tmp_path / "startup_exec.py").write_text(
        "import contextlib, sys\n"
        "from fedagg.outcomes import Interrupts, interrupt_with_subclass\n"
        "interrupt_with_subclass()\n"
        "try:\n"
        f"    with {guard}:\n"
        "        exec('import os, signal, time\\nos.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(5)', {})\n"
        "except KeyboardInterrupt as e:\n"
        "    print(type(e).__name__, e)\n"
        "sys.exit(130)\n")
    # a terminal's Ctrl-C: SIGINT at its default in the child, also when the tests run in the background
    # (there SIGINT is ignored, and fedagg leaves an ignored SIGINT ignored)
    p = subprocess.run([sys.executable, "-m", "startup_exec"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.startswith("Interrupted"), (p.stdout, p.stderr)
    assert p.returncode == 130, (p.returncode, p.stderr)


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
