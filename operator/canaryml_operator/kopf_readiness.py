"""A fix to kopf's start-up with indexes at scale, applied when the operator module loads.

With any `@kopf.index`, kopf makes every object of the first listing wait until all objects of
every indexed kind are indexed: each object gets a toggle in one `ToggleSet`, its worker drops
the toggle once indexed and then waits on the set's condition. kopf 1.45 wakes every waiting
worker whenever a toggle is made or dropped, whether or not the set's state changed: N objects
cost N² wake-ups. At 1,000 ModelDeployments (12,000 objects: each one and its 11 children) a
restarted operator spent minutes at a full core in those wake-ups before resuming any resource
(benchmarks/operator_scale.py); at 100 it was about 4 s.

Here `make_toggle` and `drop_toggle(s)` wake the waiters only when the set's state (all on, for
the readiness set) changes. Waiters of the set wait for that state; a single toggle's waiters
are woken by `Toggle.turn_to`, which is left as it is. No library does this: it is a patch of
kopf's internals, applied only to the version it was written for (a pinned one); another
version is left alone, with a warning. Worth proposing upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import version
from typing import Any

log = logging.getLogger(__name__)

PATCHED_VERSIONS = ("1.45.",)


def patch_toggle_wakeups() -> bool:
    """Patch kopf's ToggleSet once; True if it is (now or already) patched."""
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:  # pragma: no cover - kopf moved its internals
        log.warning("kopf's aiotoggles not found: its start-up wake-ups are left as they are")
        return False
    toggle_set: Any = aiotoggles.ToggleSet
    if getattr(toggle_set, "_canaryml_patched", False):
        return True
    if not version("kopf").startswith(PATCHED_VERSIONS):
        log.warning(
            "kopf %s is not the version the start-up fix was written for (%s): not applied; "
            "a restart with thousands of objects may be slow",
            version("kopf"),
            ", ".join(PATCHED_VERSIONS),
        )
        return False

    async def make_toggle(
        self: Any, __val: bool = False, *, name: str | None = None
    ) -> aiotoggles.Toggle:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self: Any, toggle: aiotoggles.Toggle) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    async def drop_toggles(self: Any, toggles: Iterable[aiotoggles.Toggle]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    toggle_set.make_toggle = make_toggle
    toggle_set.drop_toggle = drop_toggle
    toggle_set.drop_toggles = drop_toggles
    toggle_set._canaryml_patched = True
    return True
