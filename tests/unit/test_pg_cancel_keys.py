"""Cancel keys of a gateway with worker processes: the issuing worker's slot is in the key, and a
CancelRequest for another worker's key is passed on once, to that worker only."""

from __future__ import annotations

import asyncio

import pytest

from wardgate.protocols.postgres.engine import MAX_SLOTS, SLOT_SHIFT, CancelRegistry


def test_keys_carry_the_slot_and_stay_positive_32_bit() -> None:
    for slot in (1, 2, 77, MAX_SLOTS):
        registry = CancelRegistry(slot)
        for _ in range(200):
            pid, secret = registry.issue("127.0.0.1", 5432, 1234, b"\0\0\0\1")
            assert 0 < pid < 2**31 and pid >> SLOT_SHIFT == slot and registry.owner(pid) == slot
            assert len(secret) == 4 and registry.find(pid, secret) is not None
            assert registry.find(pid, bytes(b ^ 1 for b in secret)) is None


def test_slot_out_of_range_is_refused() -> None:
    for slot in (-1, MAX_SLOTS + 1):
        with pytest.raises(ValueError, match="slot"):
            CancelRegistry(slot)


def test_another_workers_key_is_forwarded_to_that_worker_once() -> None:
    forwarded: list[tuple[int, int, bytes]] = []

    async def forward(slot: int, pid: int, secret: bytes) -> None:
        forwarded.append((slot, pid, secret))

    mine = CancelRegistry(1, forward)
    other = CancelRegistry(3)
    pid, secret = other.issue("127.0.0.1", 5432, 99, b"abcd")

    async def run() -> None:
        await mine.cancel(pid, secret)                  # worker 3's key, received by worker 1
        await mine.cancel(pid, secret, forwarded=True)  # already passed on once: not again
        own_unknown = (1 << SLOT_SHIFT) | 5
        await mine.cancel(own_unknown, b"zzzz")         # worker 1's own slot, unknown key: dropped
        await CancelRegistry(0, forward).cancel(pid, secret)  # no workers: nothing to forward to

    asyncio.run(run())
    assert forwarded == [(3, pid, secret)]


def test_a_failing_forward_is_logged_not_raised(caplog) -> None:
    async def forward(slot: int, pid: int, secret: bytes) -> None:
        raise OSError("worker 2 is gone")

    registry = CancelRegistry(1, forward)
    asyncio.run(registry.cancel((2 << SLOT_SHIFT) | 7, b"abcd"))
    assert "worker 2 is gone" in caplog.text
