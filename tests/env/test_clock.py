"""The virtual clock, worked by hand: three devices, a model of 10^6 bytes (8 Mbit), 10 local steps of
batch 10 each (100 examples, 1 epoch).

========  ==============  =====  ====  =======  ===============  ===============  =========  ========
client    compute_s/step  up     down  latency  download         compute          upload     seconds
========  ==============  =====  ====  =======  ===============  ===============  =========  ========
0         0.001           4      8     0.1      0.1 + 8/8 = 1.1  10*10*0.001=0.1  0.1+2=2.1  3.3
1         0.01            16     16    0        0.5              1.0              0.5        2.0
2         0.05            80     80    0.2      0.2 + 0.1 = 0.3  5.0              0.3        5.6
========  ==============  =====  ====  =======  ===============  ===============  =========  ========

No deadline: the round takes 5.6 s. ``deadline_s=4``, drop: client 2 misses it, the round takes 4 s.
Partial: client 2 fits floor((4 - 0.6) / 0.5) = 6 steps and is back at 0.3 + 3 + 0.3 = 3.6 s; everyone
replies, so the round takes 3.6 s.
"""
from __future__ import annotations

import pytest

from fedagg.env.clock import Clock
from fedagg.env.devices import build_device_profile
from fedagg.env.heterogeneity import build_heterogeneity
from fedagg.task.cohort import planned_steps

TRACE = """client,compute_s_per_step,up_mbps,down_mbps,latency_s
0,0.001,4,8,0.1
1,0.01,16,16,0
2,0.05,80,80,0.2
"""
MODEL_BYTES, BATCH, N_EXAMPLES = 1_000_000, 10, 100


def steps(client, plan):  # the training code's own rule, 100 examples, 1 epoch of batch 10
    return planned_steps(N_EXAMPLES, epochs=plan.get("epochs") or 1, steps=0, batch_size=BATCH,
                         work_fraction=plan.get("work_fraction", 1.0))


def clock(tmp_path, het="none", deadline_s=None, mode="drop", **het_opts):
    (tmp_path / "d.csv").write_text(TRACE)
    profile = build_device_profile("trace", 3, 0, path=str(tmp_path / "d.csv"))
    return Clock(profile, build_heterogeneity(het, 3, 0, **het_opts), steps, MODEL_BYTES, BATCH, deadline_s, mode)


def test_three_clients_worked_by_hand(tmp_path):
    c = clock(tmp_path)
    times = [c.timing(1, n) for n in range(3)]
    assert [t.download_s for t in times] == pytest.approx([1.1, 0.5, 0.3], rel=1e-12)
    assert [t.compute_s for t in times] == pytest.approx([0.1, 1.0, 5.0], rel=1e-12)
    assert [t.upload_s for t in times] == pytest.approx([2.1, 0.5, 0.3], rel=1e-12)
    assert [t.seconds for t in times] == pytest.approx([3.3, 2.0, 5.6], rel=1e-12)
    assert [t.outcome for t in times] == ["ok"] * 3 and all(c.plan(1, n) == {} for n in range(3))
    r1 = c.finish_round(1, [2, 0, 1])
    assert (r1.start_s, r1.end_s) == (0.0, pytest.approx(5.6))
    r2 = c.finish_round(2, [0, 1])  # client 2 not asked: the round ends with client 0
    assert (r2.start_s, r2.end_s) == (pytest.approx(5.6), pytest.approx(8.9))
    assert c.finish_round(3, []).end_s == pytest.approx(8.9)  # nobody asked: no time passes
    assert c.state_dict() == {"now": pytest.approx(8.9)}


def test_a_deadline_drops_exactly_the_clients_past_it(tmp_path):
    c = clock(tmp_path, deadline_s=4.0)
    assert [c.timing(1, n).outcome for n in range(3)] == ["ok", "ok", "late"]
    assert [c.plan(1, n) for n in range(3)] == [{}, {}, {"fault": "deadline"}]
    assert c.finish_round(1, [0, 1, 2]).end_s == 4.0  # the server waits for client 2 until the deadline
    assert c.finish_round(2, [0, 1]).end_s == pytest.approx(4.0 + 3.3)  # all back before it: the last reply
    edge = clock(tmp_path, deadline_s=3.3)  # back exactly at the deadline (up to rounding): in time
    assert [edge.timing(1, n).outcome for n in range(3)] == ["ok", "ok", "late"]


def test_partial_mode_returns_exactly_the_steps_that_fit(tmp_path):
    c = clock(tmp_path, deadline_s=4.0, mode="partial")
    t = c.timing(1, 2)
    assert (t.outcome, t.steps, t.seconds) == ("partial", 6, pytest.approx(3.6))
    assert steps(2, c.plan(1, 2)) == 6  # the plan the client receives makes it train exactly those 6 steps
    assert c.finish_round(1, [0, 1, 2]).end_s == pytest.approx(3.6)
    tight = clock(tmp_path, deadline_s=0.6 + 0.5 * 0.999, mode="partial")  # not even one step fits
    assert [tight.timing(1, n).outcome for n in range(3)] == ["late", "late", "late"]
    assert tight.finish_round(1, [0, 1, 2]).end_s == pytest.approx(1.0995)


@pytest.mark.parametrize("deadline", [1.7, 2.0, 2.3, 3.05])
def test_partial_steps_are_the_most_that_fit(tmp_path, deadline):
    c = clock(tmp_path, deadline_s=deadline, mode="partial")
    for n in range(3):
        t = c.timing(1, n)
        step = t.compute_s / max(t.steps, 1)
        if t.outcome == "partial":
            assert t.seconds <= deadline + 1e-9 < t.seconds + step  # one more step would not fit
            assert steps(n, c.plan(1, n)) == t.steps
        elif t.outcome == "ok":
            assert t.seconds <= deadline + 1e-9


def test_the_clock_times_the_heterogeneity_plan(tmp_path):
    """A straggler's partial work (heterogeneity=stragglers) takes less compute; an injected fault is
    logged as such; the clock adds its deadline on top of the plan."""
    c = clock(tmp_path, het="stragglers", rate=1.0, work_min=0.5, work_max=0.5)
    t = c.timing(1, 2)
    assert t.plan == {"work_fraction": 0.5} and t.steps == 5 and t.compute_s == pytest.approx(2.5)
    d = clock(tmp_path, het="dropouts", rate=1.0, deadline_s=10.0)
    assert [d.timing(1, n).outcome for n in range(3)] == ["dropout"] * 3
    assert d.finish_round(1, [0, 1, 2]).end_s == 10.0  # nobody replies: the server waits out the deadline
    e = clock(tmp_path, het="crashes", rate=1.0, deadline_s=10.0)
    assert e.finish_round(1, [0, 1, 2]).end_s == 0.0  # crashes are immediate errors


def test_a_device_off_misses_the_round(tmp_path):
    (tmp_path / "d.csv").write_text("round," + TRACE.splitlines()[0] + "\n1,0,inf,4,8,0.1\n1,1,0.01,16,16,0\n"
                                    "1,2,0.05,80,80,0.2\n")
    profile = build_device_profile("trace", 3, 0, path=str(tmp_path / "d.csv"))
    c = Clock(profile, build_heterogeneity("none", 3, 0), steps, MODEL_BYTES, BATCH)
    t = c.timing(1, 0)
    assert t.outcome == "off" and t.plan == {"fault": "deadline"} and t.log()["seconds"] is None
    assert c.finish_round(1, [0, 1, 2]).end_s == pytest.approx(5.6)


def test_the_clock_state_resumes(tmp_path):
    a = clock(tmp_path, deadline_s=4.0)
    for r in (1, 2):
        a.finish_round(r, [0, 1, 2])
    b = clock(tmp_path, deadline_s=4.0)
    b.load_state_dict(a.state_dict())
    assert b.finish_round(3, [0, 1]).end_s == a.finish_round(3, [0, 1]).end_s == pytest.approx(8.0 + 3.3)


def test_bad_deadlines_are_refused(tmp_path):
    with pytest.raises(ValueError, match="server.deadline_mode='sometimes' must be one of drop, partial"):
        clock(tmp_path, deadline_s=1.0, mode="sometimes")
    with pytest.raises(ValueError, match="server.deadline_s=-1.0 must be > 0"):
        clock(tmp_path, deadline_s=-1.0)
