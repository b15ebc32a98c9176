"""The benchmark scripts run end to end (their figures are reported in the
README; here only that they run and what they report is consistent)."""
from __future__ import annotations

import json
import subprocess
import sys

from fedagg_testing import ROOT


def test_bench_runtime_quick_plain_and_vectorised(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_runtime.py"), "--quick",
                        "--variants", "plain,inprocess-vec,floor", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| 10 | inprocess-vec |" in p.stdout and "training" in p.stdout
    # the compute ceiling beside the ratios: one worker in process, so the stacked ratio itself
    ceil = [ln for ln in p.stdout.splitlines() if "compute ceiling" in ln]
    assert len(ceil) == 1 and "vectorize=auto stacks" in ceil[0]
    stacked_ratio = float(ceil[0].split("(ratio ")[1].split(";")[0])
    vec_row = next(ln for ln in p.stdout.splitlines() if ln.startswith("| 10 | inprocess-vec |")).split("|")
    assert float(vec_row[7]) == round(stacked_ratio, 2)
    # and the same measurement on the run's own (unequal) shards, with its multiple of the ratio to plain
    own_ratio = float(ceil[0].split("on the run's own shards:")[1].split("(ratio ")[1].split(")")[0])
    assert own_ratio > 0 and abs(float(vec_row[9]) - float(vec_row[6]) / own_ratio) <= 0.01 + 0.01 / own_ratio
    r = json.loads(out.read_text())
    plain, vec = r["10|plain"], r["10|inprocess-vec"]
    assert len(plain["round_s"]) == len(vec["round_s"]) == 3
    # the plain loop's training is part of its round, and the two paths learn the same model (to rounding)
    assert all(0 < t <= s for t, s in zip(plain["train_s"], plain["round_s"]))
    assert abs(plain["final_accuracy"] - vec["final_accuracy"]) < 0.01
    assert plain["final_accuracy"] > 0.15  # 10 classes: above chance after 3 rounds
    # the two-worker floor: the same clients on bare processes, in the runtime's chunks (10 clients: one stacked
    # chunk, so one worker trains and the other has none), learning the same model
    floor = r["10|floor"]
    assert floor["stacked"] is True and floor["chunks"] == [10] and floor["floor_workers"] == 2
    assert len(floor["round_s"]) == len(floor["worker_s"]) == 3
    assert all(max(ws) <= t <= s for ws, t, s in zip(floor["worker_s"], floor["train_s"], floor["round_s"]))
    assert abs(floor["final_accuracy"] - vec["final_accuracy"]) < 0.01
    rows = {ln.split("|")[2].strip(): ln.split("|") for ln in p.stdout.splitlines() if ln.startswith("| 10 |")}
    assert rows["floor"][10].strip() == "1.00" and rows["inprocess-vec"][10].strip() == "—"  # x floor: 2 workers only


def test_bench_transport_times_both_ways_back_and_checks_the_values():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_transport.py"), "--model", "mlp", "--input", "40",
                        "--chunk", "3", "--chunks", "2", "--calls", "4"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): float(ln.split("|")[2]) for ln in p.stdout.splitlines() if ln.startswith("| ") and " band " in ln}
    ib, oob = rows["in band (Ray's default pickling)"], rows["out of band (array_transport)"]
    assert ib > 0 and oob > 0
    ratio = float(p.stdout.split("out of band / in band: ")[1].split()[0])
    assert abs(ratio - oob / ib) <= 0.01 + 0.1 / ib  # printed to 2 decimals, from the unrounded medians
    assert "checked equal both ways" in p.stdout


def test_bench_cohort_reports_a_ratio_per_model_and_chunk():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cohort.py"), "--model", "mlp", "--chunk", "5",
                        "--clients", "10", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    row = [ln for ln in p.stdout.splitlines() if ln.startswith("| mlp | 5 |")]
    assert len(row) == 1
    one, stacked, ratio = (float(v) for v in row[0].strip("| ").split("|")[2:5])
    assert one > 0 and stacked > 0 and abs(ratio * one - stacked) <= 0.001  # printed to 3 decimals


def test_gpu_check_runs_as_a_cpu_smoke_test():
    """The GPU check is prepared for a CUDA machine; on CPU its --quick mode runs every section but Ray's."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                        "--skip-ray"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [ln for ln in p.stdout.split("\n\n", 1)[-1].splitlines() if ln.startswith("| training |")]
    assert {r.split("|")[2].strip() for r in rows} == {"cnn", "cnn1d", "resnet20"}
    assert "max |diff| 0.00e+00 (pass" in p.stdout  # cpu against cpu: identical


def test_bench_runtime_async_reports_every_mode_beside_sync(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_runtime.py"), "--async", "--clients", "4",
                        "--rounds", "2", "--model", "mlp", "--async-runtime", "inprocess-vec", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [r[f"4|{m}"]["updates"] for m in ("sync", "fedasync", "fedbuff", "fedfix")] == [2, 8, 4, 2]
    assert r["4|sync"]["trained"] == r["4|sync"]["applied"] == 8  # 2 rounds of all 4 clients
    for m in ("fedasync", "fedbuff"):  # every update applies 1 (fedasync) or K = 2 (fedbuff) jobs
        assert r[f"4|{m}"]["applied"] == 8 and r[f"4|{m}"]["trained"] >= 8
        assert r[f"4|{m}"]["schedule_us_per_update"] > 0 and r[f"4|{m}"]["step_us_per_update"] > 0
    assert "| 4 | sync | 2 | 8 | 8 |" in p.stdout and "| 4 | fedasync | 8 |" in p.stdout
    for m in ("sync", "fedasync", "fedbuff", "fedfix"):  # the evaluation, timed inside the run: part of its updates
        assert 0 < r[f"4|{m}"]["eval_total_s"] < sum(r[f"4|{m}"]["round_s"])
