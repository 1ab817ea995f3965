"""bench.soak's bookkeeping: where it samples RSS and which samples it reports."""

from __future__ import annotations

import os

from bench.load import Stats
from bench.soak import Monitor, Sample, _descendants, _result, marks


def test_marks_every_n_requests_and_the_middle() -> None:
    got = marks(20_000, 1000)
    assert got == sorted(got) and got[0] == 1000 and got[-1] == 19_000
    assert 10_000 in got and 0 not in got and 20_000 not in got
    assert marks(2500, 1000) == [1000, 1250, 2000]  # the middle even when off the grid
    assert marks(10, 0) == list(range(1, 10))  # a zero step means every request


def test_report_points_start_middle_end_and_both_rss_figures() -> None:
    monitor = Monitor(pid=os.getpid())
    for at, mb in [(0, 100.0), (4000, 150.0), (10_003, 152.0), (16_000, 151.0), (20_007, 153.0)]:
        monitor.samples.append(Sample(at, at / 10, mb, 2 * mb, 8))
    monitor.peak_mb = 160.0
    stats = Stats()
    stats.record("create", 201, "", 10.0)
    stats.record("refund", 503, "channel_unavailable", 30.0)
    result = _result(stats, monitor, 20_007, 8, 100.0, 0, 1.0)
    rss = result["rss_mb"]
    assert [rss[p]["at_request"] for p in ("start", "middle", "end")] == [0, 10_003, 20_007]
    assert rss["middle"]["children_mb"] == 304.0  # environments reported apart from the stack
    assert rss["steady_growth"] == 3.0  # after the first 10%: 150 .. 153
    assert result["server_errors"] == 1 and not result["passed"]


def test_descendants_finds_this_process_children() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in _descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
