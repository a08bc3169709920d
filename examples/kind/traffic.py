"""Send prediction traffic to a canaryml ModelDeployment, and count the answers.

    kubectl -n ml port-forward svc/breast-cancer 8080:80 &
    python examples/kind/traffic.py --url http://127.0.0.1:8080 --rate 20

Each request is `POST /predict` with one row of the test set (a JSON object, as the model
server's plain endpoint takes it) from a random user named in the `x-user-id` header, the
ModelDeployment's `routing.stickyHeader`: a user stays on one track. Every 10 s a line says how
many requests were answered with each status code and by which track (the router's
`x-canaryml-track` header). It runs for `--duration` seconds, or until Ctrl-C, then prints the
totals (and writes them as JSON with `--summary FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from canaryml_cli.demo.processes import DemoError
from canaryml_cli.demo.traffic import Row, read_rows

REPORT_EVERY_S = 10.0
TRANSPORT_ERROR = "error"  # no HTTP answer at all (connection refused, reset, timeout)


@dataclass
class Counts:
    """Answers by status code (or TRANSPORT_ERROR) and by the track that answered."""

    codes: Counter[str] = field(default_factory=Counter)
    tracks: Counter[str] = field(default_factory=Counter)

    def add(self, code: str, track: str | None) -> None:
        self.codes[code] += 1
        if track:
            self.tracks[track] += 1

    def minus(self, earlier: Counts) -> Counts:
        return Counts(self.codes - earlier.codes, self.tracks - earlier.tracks)

    def copy(self) -> Counts:
        return Counts(Counter(self.codes), Counter(self.tracks))

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def line(self) -> str:
        codes = " ".join(f"{code}={n}" for code, n in sorted(self.codes.items())) or "-"
        tracks = " ".join(f"{track}={n}" for track, n in sorted(self.tracks.items())) or "-"
        return f"{self.total:6d} answers  codes: {codes}  tracks: {tracks}"

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "codes": dict(self.codes), "tracks": dict(self.tracks)}


async def send(
    client: httpx.AsyncClient, url: str, row: Row, *, header: str, user: str, counts: Counts
) -> None:
    try:
        response = await client.post(f"{url}/predict", json=row, headers={header: user})
    except httpx.TransportError:
        counts.add(TRANSPORT_ERROR, None)
        return
    counts.add(str(response.status_code), response.headers.get("x-canaryml-track"))


async def generate(
    *,
    url: str,
    rows: Sequence[Row],
    rate: float,
    duration: float | None,
    header: str,
    users: int,
    seed: int | None,
    counts: Counts,
    stop: asyncio.Event,
) -> None:
    """Send `rate` requests a second until `duration` is over or `stop` is set; print a line
    every REPORT_EVERY_S. Requests are started at a steady pace, not one after another, so a
    slow answer does not lower the rate."""
    chooser = random.Random(seed)
    population = [f"user-{chooser.getrandbits(48):012x}" for _ in range(users)]
    pending: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    started = time.monotonic()
    period = 1.0 / rate
    next_at = started
    next_report = started + REPORT_EVERY_S
    reported = Counts()
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        try:
            while not stop.is_set():
                now = time.monotonic()
                if duration is not None and now - started >= duration:
                    break
                if now >= next_report:
                    snapshot = counts.copy()
                    print(f"{now - started:6.0f}s {snapshot.minus(reported).line()}", flush=True)
                    reported = snapshot
                    next_report += REPORT_EVERY_S
                row = rows[chooser.randrange(len(rows))]
                task = asyncio.create_task(
                    send(
                        client,
                        url,
                        row,
                        header=header,
                        user=chooser.choice(population),
                        counts=counts,
                    )
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - now))
        finally:
            # Requests in flight finish: a client closed under them would count as errors.
            if pending:
                await asyncio.wait(pending, timeout=10.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the ModelDeployment's")
    parser.add_argument(
        "--rows",
        type=Path,
        default=Path("build/models/test.csv"),
        help="CSV of rows to send; its `target` column is dropped (examples/train_models.py)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    parser.add_argument("--header", default="x-user-id", help="the sticky header's name")
    parser.add_argument("--users", type=int, default=1000, help="distinct users to draw from")
    parser.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    parser.add_argument("--summary", type=Path, default=None, help="write the totals as JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be greater than 0")
    if args.users < 1:
        parser.error("--users must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be greater than 0")
    return args


async def run(args: argparse.Namespace, rows: Sequence[Row]) -> Counts:
    counts = Counts()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C (or a test's terminate()) ends the run cleanly, with the totals printed.
        with contextlib.suppress(NotImplementedError):  # Windows has no signal handlers here
            loop.add_signal_handler(signum, stop.set)
    await generate(
        url=args.url.rstrip("/"),
        rows=rows,
        rate=args.rate,
        duration=args.duration,
        header=args.header,
        users=args.users,
        seed=args.seed,
        counts=counts,
        stop=stop,
    )
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = read_rows(args.rows)
    except DemoError as error:
        print(
            f"traffic.py: {error}\n(train the example models first: "
            "python examples/train_models.py --out build/models)",
            file=sys.stderr,
        )
        return 2
    until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
    print(
        f"sending {args.rate:g} requests/s to {args.url}/predict {until} "
        f"({len(rows)} rows, {args.users} users in {args.header})",
        flush=True,
    )
    counts = asyncio.run(run(args, rows))
    print(f" total {counts.line()}", flush=True)
    if args.summary is not None:
        args.summary.write_text(json.dumps(counts.as_json(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
