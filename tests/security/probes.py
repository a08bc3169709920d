"""What an attack test measures on a real process: whether it stays live, and its memory.

`LivenessProbe` asks a URL every `interval` seconds from its own thread (as a kubelet's
liveness probe would) and records every answer's latency; an answer slower than `timeout`, or
none, is a failed probe. `rss_mb` reads a process's resident memory from /proc.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class LivenessProbe:
    url: str
    interval: float = 0.2
    timeout: float = 1.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LivenessProbe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.get(self.url, headers={"Connection": "close"})
                    elapsed = time.monotonic() - started
                    self.latencies.append(elapsed)
                    if answer.status_code != 200:
                        self.failures.append(f"status {answer.status_code}")
                except httpx.HTTPError as error:
                    self.failures.append(
                        f"{type(error).__name__} after {time.monotonic() - started:.2f} s"
                    )
                self._stop.wait(self.interval)

    def assert_live(self) -> None:
        """Every probe answered 200 within the timeout, and there were probes."""
        assert len(self.latencies) + len(self.failures) >= 3, "the probe hardly ran"
        assert not self.failures, f"liveness probes failed: {self.failures[:5]}"
        assert max(self.latencies) < self.timeout, f"slowest probe {max(self.latencies):.2f} s"
