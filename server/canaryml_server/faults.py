"""Fault injection for demo scenarios: a model server that fails or slows down on purpose.

`canaryml demo` starts a canary with CANARYML_INJECT_ERRORS or CANARYML_INJECT_LATENCY so the
rollout's checks have something to catch. The faults sit inside the server's request timing,
so its own metrics (and the router's) see them like real ones.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from canaryml_server.settings import ServerSettings

# Its own generator: nothing else's seeding or draws change which requests fail.
_random = random.Random()


@dataclass(frozen=True, slots=True)
class Faults:
    """What to inject into each prediction request; built only when something is on."""

    error_fraction: float
    latency: float
    latency_fraction: float
    draw: Callable[[], float] = _random.random

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Faults | None:
        """The faults the settings ask for, or None when they ask for none (the usual case)."""
        latency = settings.inject_latency > 0 and settings.inject_latency_fraction > 0
        if settings.inject_errors == 0 and not latency:
            return None
        return cls(
            error_fraction=settings.inject_errors,
            latency=settings.inject_latency,
            latency_fraction=settings.inject_latency_fraction,
        )

    @property
    def error_message(self) -> str:
        return f"injected fault: CANARYML_INJECT_ERRORS={self.error_fraction:g}"

    def describe(self) -> str:
        return (
            f"CANARYML_INJECT_ERRORS={self.error_fraction:g}, "
            f"CANARYML_INJECT_LATENCY={self.latency:g}, "
            f"CANARYML_INJECT_LATENCY_FRACTION={self.latency_fraction:g}"
        )

    async def apply(self) -> bool:
        """Sleep if this request draws the latency; True if it draws an error (answer 500)."""
        # Independent draws: a request can be both slow and failed, as real ones are.
        if self.latency > 0 and self.draw() < self.latency_fraction:
            await asyncio.sleep(self.latency)
        return self.error_fraction > 0 and self.draw() < self.error_fraction
