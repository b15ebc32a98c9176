"""metrics.csv / rounds.jsonl: appending a line per round gives exactly the
files a full rewrite gives, also when a metric column first appears mid-run
and after a resume loads earlier rounds."""
from __future__ import annotations

from fedagg.flower.strategy import RoundRecord
from fedagg.report.metrics import Recorder


def rec(r: int) -> RoundRecord:
    agg = {"weights": [0.5, 0.5], "weight_clients": [0, 1]}
    if r >= 3:
        agg["disco_fallback"] = r % 2  # a scalar column that appears in round 3
    return RoundRecord(r, [0, 1, 2], [0, 1], {2: "client error: boom"}, {}, 1.0 / r, agg,
                       test_loss=2.0 / r, test_accuracy=0.1 * r, seconds=0.01)


def files(d) -> tuple[str, str]:
    return (d / "metrics.csv").read_text(), (d / "rounds.jsonl").read_text()


def test_appended_files_equal_a_full_rewrite(tmp_path):
    a, b = Recorder(tmp_path / "a"), Recorder(tmp_path / "b")
    for r in range(1, 6):
        a.add(rec(r))
        b.rows, b.details = list(a.rows), list(a.details)
        b.flush()
        assert files(tmp_path / "a") == files(tmp_path / "b"), r
    csv_text, jsonl = files(tmp_path / "a")
    assert csv_text.splitlines()[0].endswith("disco_fallback") and len(csv_text.splitlines()) == 6
    assert len(jsonl.splitlines()) == 5


def test_resume_rewrites_from_loaded_rounds(tmp_path):
    full = Recorder(tmp_path / "full")
    for r in range(1, 6):
        full.add(rec(r))
    resumed = Recorder(tmp_path / "resumed")
    (tmp_path / "resumed" / "metrics.csv").write_text("stale\n")
    resumed.load(full.rows[:3], full.details[:3])
    for r in (4, 5):
        resumed.add(rec(r))
    assert files(tmp_path / "resumed") == files(tmp_path / "full")
