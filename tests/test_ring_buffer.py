"""Tests for agent.audio.ring_buffer: a reference model, hypothesis-driven, and real threads.

Samples carry their own stream position as their value, so any read shows exactly which samples
arrived, and which were lost.
"""
import collections
import random
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audio.ring_buffer import RingBuffer


def positions(start, n):
    return np.arange(start, start + n, dtype=np.float32)  # exact below 2**24


class Model:
    """The specification in the plainest terms: a bounded deque that drops from the left."""

    def __init__(self, capacity):
        self.q = collections.deque(maxlen=capacity)
        self.written = self.lost = 0

    def write(self, n):
        overflow = max(0, len(self.q) + n - self.q.maxlen)
        self.q.extend(range(self.written, self.written + n))
        self.written += n
        self.lost += overflow
        return overflow

    def read(self, n=None):
        n = len(self.q) if n is None else min(n, len(self.q))
        return [self.q.popleft() for _ in range(n)]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 40)),  # up to 4x the largest capacity below
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(0, 30))),
        st.tuples(st.just("read_wait"), st.integers(0, 30)),
    ),
    max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 12), ops=ops)
def test_reads_return_what_was_written_minus_counted_oldest_losses(capacity, ops):
    ring, model = RingBuffer(capacity), Model(capacity)
    next_expected = 0  # position after the last sample read
    seen_lost = 0
    for op, n in ops:
        if op == "write":
            assert ring.write(positions(model.written, n)) == model.write(n)
        else:
            got = ring.read(n) if op == "read" else ring.read_wait(n, timeout=0)
            # read_wait with timeout 0 returns what there is, at most n (capped at the capacity).
            expected = model.read(n if op == "read" else min(n, capacity))
            assert got.tolist() == expected
            if len(got):
                # Whatever was skipped since the last read is exactly the oldest samples, all counted.
                assert ring.last_read_start == got[0]
                seen_lost += int(got[0]) - next_expected
                next_expected = int(got[-1]) + 1
        assert ring.lost_samples == model.lost
        assert ring.written_samples == model.written
        assert ring.available == len(model.q) <= capacity
        assert ring.read_position == model.written - len(model.q)
    # Drain: every written sample was either read or counted lost.
    rest = ring.read()
    if len(rest):
        seen_lost += int(rest[0]) - next_expected
        next_expected = int(rest[-1]) + 1
    seen_lost += model.written - next_expected  # lost after the last read and never followed by one
    assert seen_lost == ring.lost_samples


@settings(max_examples=100, deadline=None)
@given(capacity=st.integers(1, 50), blocks=st.lists(st.integers(0, 200), max_size=20),
       reads=st.lists(st.integers(1, 60), max_size=20))
def test_write_wait_never_loses(capacity, blocks, reads):
    """Back-pressure writers (files, pipes) see every sample arrive, however small the ring."""
    ring = RingBuffer(capacity)
    total = sum(blocks)
    got = []

    def writer():
        pos = 0
        for n in blocks:
            assert ring.write_wait(positions(pos, n), timeout=5)
            pos += n
        ring.close()

    t = threading.Thread(target=writer)
    t.start()
    sizes = iter(reads)
    while not ring.exhausted:
        got.append(ring.read_wait(next(sizes, 7), timeout=5))
    t.join()
    assert np.concatenate(got + [np.zeros(0, np.float32)]).tolist() == list(range(total))
    assert ring.lost_samples == 0


def test_read_wait_blocks_until_enough_then_returns_exactly_n():
    ring = RingBuffer(100)
    threading.Timer(0.05, ring.write, args=(positions(0, 30),)).start()
    t0 = time.monotonic()
    got = ring.read_wait(20, timeout=5)
    assert time.monotonic() - t0 >= 0.04
    assert got.tolist() == list(range(20))
    assert ring.last_read_start == 0
    assert ring.read_wait(50, timeout=0.01).tolist() == list(range(20, 30))  # timed out: what is there
    assert ring.last_read_start == 20


def test_close_wakes_a_waiting_reader_which_gets_the_rest():
    ring = RingBuffer(100)
    ring.write(positions(0, 5))
    threading.Timer(0.05, ring.close).start()
    assert ring.read_wait(50, timeout=5).tolist() == list(range(5))
    assert ring.exhausted
    assert ring.write(positions(5, 3)) == 0 and ring.available == 0  # late writes are dropped


def test_block_larger_than_capacity_keeps_the_newest():
    ring = RingBuffer(4)
    ring.write(positions(0, 2))
    assert ring.write(positions(2, 10)) == 8  # 2 unread + the 6 oldest of the block
    assert ring.read().tolist() == [8, 9, 10, 11]
    assert ring.last_read_start == 8 and ring.lost_samples == 8


def test_int16_capture_converts_exactly_into_float32():
    ring = RingBuffer(8)
    ring.write(np.array([-32768, -1, 0, 1, 32767], np.int16))
    assert ring.read().tolist() == [-32768.0, -1.0, 0.0, 1.0, 32767.0]


def test_rejects_empty_capacity():
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0)


@pytest.mark.parametrize("capacity, most, reader_pause", [(16384, 4000, 0.0), (256, 200, 0.001)],
                         ids=["keeps-up", "falls-behind"])
def test_concurrent_writer_and_reader_account_for_every_sample(capacity, most, reader_pause):
    """A real writer thread and reader thread: every sample is read once, in order, or counted lost."""
    ring = RingBuffer(capacity)
    total = 200_000
    rng = random.Random(1)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(1, 300), total - sum(sizes)))
    reads = []

    def writer():
        pos = 0
        for i, n in enumerate(sizes):
            ring.write(positions(pos, n))
            pos += n
            if i % 10 == 0:
                time.sleep(0.001)  # paced, roughly, like a callback: ~1.5 M samples/s
        ring.close()

    def reader():
        r = random.Random(2)
        while not ring.exhausted:
            block = ring.read_wait(r.randint(1, most), timeout=1)
            if len(block):
                reads.append((ring.last_read_start, block))
            time.sleep(reader_pause)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)

    expected_next, lost = 0, 0
    for start, block in reads:
        assert block.tolist() == list(range(start, start + len(block)))  # each read is contiguous
        assert start >= expected_next  # in order; anything skipped was lost, oldest first
        lost += start - expected_next
        expected_next = start + len(block)
    lost += total - expected_next
    assert ring.written_samples == total
    assert lost == ring.lost_samples
    assert sum(len(b) for _, b in reads) + ring.lost_samples == total
    assert len(reads) > 10  # the threads really interleaved
