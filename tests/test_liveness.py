"""What the watchdog watches: the parts that must live (the local pull loop, the network loop's heartbeat)
and the decoder (no final waiting with no decode running). A clock the test moves."""

from __future__ import annotations

from agent.service.watchdog import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_network_loop_must_beat_and_devices_that_say_nothing_are_no_stall():
    clock = Clock()
    progress = Progress(clock, parts=("network",))
    progress.beat("network")
    for _ in range(30):  # half a minute with no audio at all, the loop turning every second
        clock.now += 1.0
        progress.beat("network")
        assert progress.stall(audio_timeout_s=15, decode_timeout_s=60, since=100.0) is None
    clock.now += 16
    assert "network loop has not run for 16 s" in progress.stall(15, 60, since=100.0)


def test_a_box_with_a_microphone_and_the_server_needs_both():
    clock = Clock()
    progress = Progress(clock, parts=("audio", "network"))
    clock.now += 20
    progress.beat("network")
    assert progress.stall(15, 60, since=100.0).startswith("no audio consumed for 20 s")
    progress.audio_consumed()
    assert progress.stall(15, 60, since=100.0) is None


def test_finals_waiting_with_no_decode_running_is_a_stall():
    clock = Clock()
    waited = [None]
    progress = Progress(clock, parts=(), backlog=lambda: waited[0])
    assert progress.stall(15, 60) is None
    waited[0] = 30.0
    assert progress.stall(15, 60) is None  # within decode_timeout_s
    waited[0] = 61.0
    assert progress.stall(15, 60).startswith("finals have waited 61 s with no decode running")
    with progress.decoding():  # a decode in flight: its own age is the check, not the backlog
        assert progress.stall(15, 60) is None
