"""`make soak`: a long load against an isolated `python -m local.stack`, watching its memory.

Starts the stack as its own process (ephemeral ports, REPORT lines off, logs to
.local/soak-stack.log), then SOAK_CONCURRENCY clients (default 8) repeat bench.load's round
(create a payment with an Idempotency-Key, sometimes replay it, read it and its order, refund
it in one to three parts) as the demo merchant until SOAK_REQUESTS requests (default 20,000)
were sent. Every request is signed with `payments.auth.signed_headers`.

Reported: the stack process's RSS and, separately, that of its children (the execution
environments, one `awslambdaric` process each) at start, middle and end, sampled every
SOAK_SAMPLE_EVERY requests (default 1000) and every 5 s for the peak; latency p50/p99 per
operation; status codes; 5xx and transport errors. The goal is a stack RSS that stays flat
and under 500 MB. Results also go to bench/results.json ("soak").
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.common import ROOT, Json, fmt, machine, median, percentile, table, write_results
from bench.load import Client, Merchant, Stats

RSS_GOAL_MB = 500.0


@dataclass
class Sample:
    at_request: int
    seconds: float
    stack_mb: float
    children_mb: float
    children: int


@dataclass
class Monitor:
    pid: int
    samples: list[Sample] = field(default_factory=list)
    peak_mb: float = 0.0
    peak_children_mb: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def measure(self, at_request: int, began: float) -> Sample:
        children = _descendants(self.pid)
        sample = Sample(
            at_request,
            time.monotonic() - began,
            _rss_mb(self.pid),
            sum(_rss_mb(c) for c in children),
            len(children),
        )
        with self.lock:
            self.peak_mb = max(self.peak_mb, sample.stack_mb)
            self.peak_children_mb = max(self.peak_children_mb, sample.children_mb)
        return sample

    def sample(self, at_request: int, began: float) -> Sample:
        """A sample kept for the report (start, every N requests, end)."""
        sample = self.measure(at_request, began)
        with self.lock:
            self.samples.append(sample)
        return sample

    def watch(self, began: float, stop: threading.Event, every_s: float = 5.0) -> threading.Thread:
        """Measure every `every_s` seconds until `stop`, for the peaks between the samples."""

        def run() -> None:
            while not stop.wait(every_s):
                self.measure(-1, began)

        thread = threading.Thread(target=run, name="soak-rss", daemon=True)
        thread.start()
        return thread


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the environments run in their own sessions)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SoakClient(Client):
    """bench.load's client with a longer per-request timeout (a soak queues behind cold starts)."""

    timeout = 60.0


def start_stack(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m local.stack` on ephemeral ports; (process, API URL) once /health answers."""
    port = _free_port()
    env = {
        **os.environ,
        "PAYMENTS_PORT": str(port),
        "STRIPE_SIM_PORT": str(_free_port()),
        "AWS_EMULATOR_PORT": "0",
        "LOCAL_REPORT_LINES": "0",
        "TRACES_EXPORTER_FILE": str(log.with_suffix(".traces.jsonl")),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "common"), str(ROOT)]),
    }
    env.pop("PROMETHEUS_REMOTE_WRITE_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stack exited ({process.returncode}); see {log}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=30).status_code == 200:
                return process, url
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the stack did not answer /health within 120 s; see {log}")


def stop_stack(process: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM, as a user's Ctrl-C; (exit code, seconds it took)."""
    began = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code: int | None = process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    return code, time.monotonic() - began


def _drive(
    url: str, total: int, concurrency: int, tick: Callable[[int], bool]
) -> tuple[Stats, int]:
    """Run the clients until `total` requests were sent or `tick` says stop; (stats, sent)."""
    stats = Stats()
    merchant = Merchant("mk_demo", "sk_demo_secret", "merch_demo")
    stopped = threading.Event()

    def sent_so_far() -> int:
        with stats.lock:
            return sum(len(v) for v in stats.latencies.values()) + sum(
                stats.transport_errors.values()
            )

    def budget() -> bool:
        # bench.load's round asks before each request and once per round: count only the
        # requests actually sent (answered or failed), so the total is what was sent.
        # (at most `concurrency` requests in flight: the total overshoots by that at most)
        sent = sent_so_far()
        if stopped.is_set() or sent >= total:
            return False
        if not tick(sent):
            stopped.set()
            return False
        return True

    def worker(index: int) -> None:
        rng = random.Random(index)
        client = SoakClient(url, merchant, stats, budget)
        while budget():
            client.one_round(rng)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats, sent_so_far()


def marks(total: int, every: int) -> list[int]:
    """Request counts to sample RSS at: every `every` requests, and the middle, ascending."""
    every = max(1, every)
    return sorted({*range(every, total, every), total // 2} - {0})


def run(
    total: int = 20_000,
    concurrency: int = 8,
    sample_every: int = 1000,
    interrupted: threading.Event | None = None,
) -> Json:
    """The soak; `interrupted` set (Ctrl-C, SIGTERM) stops the clients, then the stack."""
    interrupted = interrupted or threading.Event()
    log = ROOT / ".local" / "soak-stack.log"
    log.parent.mkdir(exist_ok=True)
    process, url = start_stack(log)
    monitor = Monitor(process.pid)
    began = time.monotonic()
    monitor.sample(0, began)
    pending = marks(total, sample_every)
    lock = threading.Lock()
    watching = threading.Event()
    watcher = monitor.watch(began, watching)

    def tick(sent: int) -> bool:
        """Sample RSS as the count passes each mark (the clients see the count go up by
        more than one between their looks); False (stop) once the stack has gone."""
        with lock:
            if pending and sent >= pending[0]:
                while pending and sent >= pending[0]:
                    pending.pop(0)
                monitor.sample(sent, began)
        return process.poll() is None and not interrupted.is_set()

    try:
        stats, sent = _drive(url, total, concurrency, tick)
        elapsed = time.monotonic() - began
        survived = process.poll() is None
        if survived:
            monitor.sample(sent, began)
    finally:
        watching.set()
        watcher.join()
        exit_code, stop_s = stop_stack(process)
    result = _result(stats, monitor, sent, concurrency, elapsed, exit_code, stop_s)
    if not survived:  # something else ended the stack: the figures cover what ran before
        result["stack_exited_early"] = exit_code
        result["passed"] = False
    if interrupted.is_set():
        result["interrupted"] = True
        result["passed"] = False
    return result


def _result(
    stats: Stats,
    monitor: Monitor,
    total: int,
    concurrency: int,
    elapsed: float,
    exit_code: int | None,
    stop_s: float,
) -> Json:
    every = [ms for values in stats.latencies.values() for ms in values]
    server_errors = sum(n for key, n in stats.codes.items() if key.split()[1].startswith("5"))
    # 429: the local runtime's queue gave up (Lambda would have scaled out): an error here
    throttled = sum(n for key, n in stats.codes.items() if key.split()[1] == "429")
    first, last = monitor.samples[0], monitor.samples[-1]
    middle = min(
        monitor.samples[1:-1] or monitor.samples, key=lambda s: abs(s.at_request - total // 2)
    )
    steady = [s.stack_mb for s in monitor.samples if s.at_request >= total // 10]
    growth = (max(steady) - min(steady)) if steady else 0.0
    return {
        "machine": machine(),
        "requests": len(every),
        "concurrency": concurrency,
        "elapsed_s": elapsed,
        "req_per_s": len(every) / elapsed if elapsed else 0.0,
        "rss_mb": {
            "start": first.__dict__,
            "middle": middle.__dict__,
            "end": last.__dict__,
            "peak_stack": monitor.peak_mb,
            "peak_children": monitor.peak_children_mb,
            "steady_growth": growth,
        },
        "samples": [s.__dict__ for s in monitor.samples],
        "latency_ms": {
            op: {"n": len(v), "p50": median(v), "p99": percentile(v, 99)}
            for op, v in {"all": every, **stats.latencies}.items()
        },
        "codes": dict(sorted(stats.codes.items())),
        "server_errors": server_errors,
        "throttled": throttled,
        "errors": server_errors + throttled + sum(stats.transport_errors.values()),
        "transport_errors": dict(stats.transport_errors),
        "stop": {"exit_code": exit_code, "seconds": stop_s},
        "passed": server_errors == 0
        and throttled == 0
        and not stats.transport_errors
        and monitor.peak_mb < RSS_GOAL_MB
        and exit_code == 0,
    }


def report(result: Json) -> str:
    rss = result["rss_mb"]
    rows = [
        [
            name,
            rss[name]["at_request"],
            f"{rss[name]['seconds']:.0f}",
            fmt(rss[name]["stack_mb"]),
            fmt(rss[name]["children_mb"]),
            rss[name]["children"],
        ]
        for name in ("start", "middle", "end")
    ]
    lat = result["latency_ms"]
    return "\n".join(
        [
            f"# Soak — {result['requests']} requests at concurrency {result['concurrency']} "
            f"in {result['elapsed_s']:.0f} s ({result['req_per_s']:.1f} req/s)",
            table(
                [
                    "point",
                    "after requests",
                    "s",
                    "stack RSS MB",
                    "environments RSS MB",
                    "environments",
                ],
                rows,
            ),
            f"peak stack RSS {fmt(rss['peak_stack'])} MB (goal < {RSS_GOAL_MB:.0f}), "
            f"environments {fmt(rss['peak_children'])} MB; "
            f"stack growth after the first 10%: {fmt(rss['steady_growth'])} MB",
            table(
                ["operation", "n", "p50 ms", "p99 ms"],
                [[op, e["n"], fmt(e["p50"]), fmt(e["p99"])] for op, e in lat.items()],
            ),
            table(["response", "count"], list(result["codes"].items())),
            f"errors: {result['errors']} (5xx: {result['server_errors']}, 429: "
            f"{result['throttled']}, transport: {result['transport_errors'] or 0}); "
            f"SIGTERM → exit {result['stop']['exit_code']} in {result['stop']['seconds']:.1f} s"
            + (
                f" (the stack had already exited: {result['stack_exited_early']})"
                if "stack_exited_early" in result
                else ""
            ),
            "INTERRUPTED (figures up to the stop)"
            if result.get("interrupted")
            else "PASS"
            if result["passed"]
            else "FAIL",
        ]
    )


def main() -> int:
    interrupted = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # (SIGINT even if the shell ignored it)
        signal.signal(signum, lambda *_: interrupted.set())
    result = run(
        interrupted=interrupted,
        total=int(os.environ.get("SOAK_REQUESTS", "20000")),
        concurrency=int(os.environ.get("SOAK_CONCURRENCY", "8")),
        sample_every=int(os.environ.get("SOAK_SAMPLE_EVERY", "1000")),
    )
    write_results("soak", result)
    print(report(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
