"""The start-up fix to kopf's readiness set (canaryml_operator/kopf_readiness.py): waiters wake
only when the set's state changes, and still wake when it does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from canaryml_operator import kopf_readiness
from kopf._cogs.aiokits import aiotoggles


def test_the_patch_is_applied_to_the_pinned_kopf() -> None:
    # A kopf upgrade that changes the version leaves the patch off (with a warning): this test
    # then says so, and the fix must be checked against the new kopf.
    assert kopf_readiness.patch_toggle_wakeups()
    assert getattr(aiotoggles.ToggleSet, "_canaryml_patched", False)


async def test_waiters_wake_once_when_the_last_object_is_indexed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's start-up: a toggle per listed object, each dropped once it is indexed, every
    object waiting for all. 300 objects: kopf 1.45 woke every waiter at each of the 600 makes
    and drops; patched, they are woken when the state changes: off at the first make, on at the
    last drop."""
    kopf_readiness.patch_toggle_wakeups()
    notified = 0
    real = asyncio.Condition.notify_all

    def counting(self: asyncio.Condition) -> None:
        nonlocal notified
        notified += 1
        real(self)

    monkeypatch.setattr(asyncio.Condition, "notify_all", counting)
    ready = aiotoggles.ToggleSet(all)
    objects = [await ready.make_toggle(name=f"object-{i}") for i in range(300)]
    woken: list[int] = []

    async def worker(index: int) -> None:
        await ready.drop_toggle(objects[index])
        await ready.wait_for(True)
        woken.append(index)

    workers = [asyncio.create_task(worker(i)) for i in range(300)]
    await asyncio.wait_for(asyncio.gather(*workers), timeout=10)
    assert sorted(woken) == list(range(300))  # every one woke
    assert ready.is_on()
    assert notified <= 2, notified


async def test_a_new_toggle_turns_the_set_off_and_its_waiters_see_it() -> None:
    kopf_readiness.patch_toggle_wakeups()
    ready = aiotoggles.ToggleSet(all)
    first = await ready.make_toggle(True)
    assert ready.is_on()
    waiting_off: Any = asyncio.create_task(ready.wait_for(False))
    await asyncio.sleep(0)
    second = await ready.make_toggle(False)
    await asyncio.wait_for(waiting_off, timeout=1)
    waiting_on = asyncio.create_task(ready.wait_for(True))
    await ready.drop_toggles([second])
    await asyncio.wait_for(waiting_on, timeout=1)
    await ready.drop_toggle(first)
    assert ready.is_on()
