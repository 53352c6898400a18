"""sd_notify over a real unix datagram socket, the progress-gated watchdog, and service logging.

The tests bind the socket systemd would (a path, or an abstract `@name`), point `$NOTIFY_SOCKET`
at it, and read the datagrams the agent sends.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid

import pytest

from agent.service import LoggingSettings, Notifier, Progress, Watchdog, describe, setup_logging, watchdog_interval
from agent.service import logging as service_logging
from agent.service.notify import socket_address


class Listener:
    """A bound AF_UNIX datagram socket that records (arrival time, {key: value}) per message."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(address))
        self.sock.settimeout(0.05)
        self.address = address
        self.messages: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, predicate, timeout=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, fields in list(self.messages):
                if predicate(fields):
                    return fields
            time.sleep(0.01)
        raise AssertionError(f"no matching message; got {[m for _, m in self.messages]}")

    def pings(self, since=0.0):
        return [t for t, m in self.messages if m.get("WATCHDOG") == "1" and t >= since]

    def statuses(self):
        return [m["STATUS"] for _, m in self.messages if "STATUS" in m]

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)
            os.rmdir(os.path.dirname(self.address))


def _listen(kind, tmp_path, monkeypatch):
    # A unix socket path must fit in 108 bytes: pytest's tmp_path may not, so use a short directory.
    if kind == "path":
        address = tempfile.mkdtemp(prefix="sd-", dir="/tmp" if os.path.isdir("/tmp") else None) + "/notify"
    else:
        address = f"@stt-agent-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return Listener(address)


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path, monkeypatch):
    """$NOTIFY_SOCKET as a filesystem path, and as an abstract socket (@name)."""
    lst = _listen(request.param, tmp_path, monkeypatch)
    yield lst
    lst.close()


# --------------------------------------------------------------------------------------- notify
def test_ready_status_stopping_reach_the_socket(listener):
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready("listening on mic")
    assert listener.wait_for(lambda m: "READY" in m) == {"READY": "1", "STATUS": "listening on mic"}
    assert notifier.status("decoding\non two lines")  # a newline would start a new field
    assert listener.wait_for(lambda m: m.get("STATUS", "").startswith("decoding")) == {
        "STATUS": "decoding on two lines"}
    assert notifier.watchdog()
    listener.wait_for(lambda m: m == {"WATCHDOG": "1"})
    assert notifier.extend_timeout(90)
    listener.wait_for(lambda m: m == {"EXTEND_TIMEOUT_USEC": "90000000"})
    assert notifier.stopping("draining")
    assert listener.wait_for(lambda m: "STOPPING" in m) == {"STOPPING": "1", "STATUS": "draining"}
    notifier.close()


def test_reloading_carries_the_monotonic_clock(listener):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier().reloading()
    message = listener.wait_for(lambda m: "RELOADING" in m)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_no_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False and notifier.stopping() is False


def test_a_missing_manager_is_not_fatal(tmp_path):
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.enabled
    assert notifier.ready() is False  # logged once, never raised


def test_unsupported_addresses_disable_notifications():
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None
    assert socket_address("@abc") == "\0abc"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "400000"}) == pytest.approx(0.2)
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    # WATCHDOG_PID names the process that must ping; a child that inherited the variables must not.
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}) == pytest.approx(0.2)
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None


# ------------------------------------------------------------------------------------- watchdog
class Ticker:
    """The pipeline thread: ticks audio_consumed() every 20 ms until paused or stopped."""

    def __init__(self, progress: Progress, waiting: bool = False):
        self.progress = progress
        self.waiting = waiting
        self.running = threading.Event()
        self.running.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            if self.running.is_set():
                if self.waiting:
                    self.progress.waiting_for_audio()
                else:
                    self.progress.audio_consumed()

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def watchdog_env(tmp_path, monkeypatch):
    """An abstract notify socket (the path form is covered above) and WatchdogSec=0.4 s."""
    lst = _listen("abstract", tmp_path, monkeypatch)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # -> a ping every 0.2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield lst
    lst.close()


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def test_pings_at_half_the_watchdog_interval_while_audio_flows(watchdog_env):
    progress = Progress()
    ticker = Ticker(progress)
    dog = Watchdog(progress, audio_timeout_s=0.5, decode_timeout_s=5)
    assert dog.interval == pytest.approx(0.2)
    dog.start()
    dog.ready("listening")
    start = time.monotonic()
    time.sleep(1.3)
    dog.stop()
    ticker.stop()
    pings = watchdog_env.pings(since=start)
    assert 5 <= len(pings) <= 8, pings
    gaps = _gaps(pings)
    assert all(0.12 <= g <= 0.32 for g in gaps), gaps
    assert sum(gaps) / len(gaps) == pytest.approx(0.2, abs=0.03)


def test_a_stalled_pipeline_stops_the_pings(watchdog_env):
    progress = Progress()
    ticker = Ticker(progress)
    dog = Watchdog(progress, audio_timeout_s=0.3, decode_timeout_s=5).start()
    dog.ready()
    time.sleep(0.5)
    assert len(watchdog_env.pings()) >= 2
    ticker.running.clear()  # the pipeline thread hangs: no more audio consumed
    stalled_at = time.monotonic()
    status = watchdog_env.wait_for(lambda m: m.get("STATUS", "").startswith("stalled"))
    assert "no audio consumed" in status["STATUS"]
    time.sleep(0.8)
    # No ping later than the audio timeout (+ one ping period) after the stall: systemd's watchdog fires.
    late = watchdog_env.pings(since=stalled_at + 0.3 + 0.25)
    assert late == [], late
    assert dog.stall() is not None
    # The pipeline moves again (e.g. the mic came back before systemd acted): pings resume.
    ticker.running.set()
    resumed = time.monotonic()
    time.sleep(0.5)
    assert len(watchdog_env.pings(since=resumed)) >= 1
    dog.stop()
    ticker.stop()


def test_a_stuck_decode_stops_the_pings_even_while_audio_flows(watchdog_env, caplog):
    progress = Progress()
    ticker = Ticker(progress)
    dog = Watchdog(progress, audio_timeout_s=5, decode_timeout_s=0.3).start()
    dog.ready()
    with progress.decoding():  # a normal decode
        time.sleep(0.05)
    assert progress.decodes == 1 and progress.last_decode_ms >= 40
    token = progress.decode_started()  # this one never returns...
    stuck_at = time.monotonic()
    status = watchdog_env.wait_for(lambda m: m.get("STATUS", "").startswith("stalled"))
    assert "decode has been running" in status["STATUS"]
    # The log says where each thread is, before systemd kills the process.
    stall_log = next(r for r in caplog.records if r.__dict__.get("EVENT") == "watchdog_stall")
    assert "thread MainThread" in stall_log.getMessage() and "in wait_for" in stall_log.getMessage()
    time.sleep(0.6)
    assert watchdog_env.pings(since=stuck_at + 0.3 + 0.25) == []
    progress.decode_finished(token)  # ...until it does
    done = time.monotonic()
    time.sleep(0.5)
    assert len(watchdog_env.pings(since=done)) >= 1
    dog.stop()
    ticker.stop()


def test_waiting_for_the_microphone_is_not_a_stall(watchdog_env):
    progress = Progress()
    ticker = Ticker(progress, waiting=True)  # the loop runs, the source reopens its device
    dog = Watchdog(progress, audio_timeout_s=0.2, decode_timeout_s=5).start()
    dog.ready()
    start = time.monotonic()
    time.sleep(0.9)
    assert len(watchdog_env.pings(since=start + 0.3)) >= 2
    assert dog.stall() is None
    dog.stop()
    ticker.stop()


def test_pings_are_unconditional_while_starting_and_stopping(watchdog_env):
    progress = Progress()  # nothing ever ticks it: model loading, then draining
    dog = Watchdog(progress, audio_timeout_s=0.1, decode_timeout_s=0.1).start()
    time.sleep(0.5)
    assert len(watchdog_env.pings()) >= 2  # starting: TimeoutStartSec= bounds this phase
    dog.ready()
    time.sleep(0.4)
    assert dog.stall() is not None
    dog.stopping("draining")
    watchdog_env.wait_for(lambda m: "STOPPING" in m)
    stopped = time.monotonic()
    time.sleep(0.5)
    assert len(watchdog_env.pings(since=stopped)) >= 1
    dog.stop()


def test_the_health_file_follows_ready_and_stopping_at_once(tmp_path, monkeypatch):
    """A probe must not read "starting" for a whole round (5 s) after READY=1, nor "running" while draining."""
    from agent.service import health_file

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = tmp_path / "health.json"
    dog = Watchdog(Progress(), status_interval_s=60, health_file=path).start()  # rounds a minute apart
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health_file.judge(path)[1] == "starting (loading the model)"
    dog.ready("listening on mic")
    assert health_file.judge(path) == (True, "running (listening on mic)")
    dog.stopping()
    assert json.loads(path.read_text())["state"] == "stopping"
    dog.stop()
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary files left behind


def test_status_lines_come_from_the_callable_rate_limited(watchdog_env):
    progress = Progress()
    ticker = Ticker(progress)
    state = {"n": 0}

    def status():
        state["n"] += 1
        return {"provider": "cuda", "utterances": state["n"], "last_latency_ms": 212.4, "broker": state["n"] % 2 == 0,
                "skipped": None}

    dog = Watchdog(progress, status=status, audio_timeout_s=5, decode_timeout_s=5, status_interval_s=0.5).start()
    dog.ready()
    time.sleep(1.3)
    dog.stop()
    ticker.stop()
    statuses = watchdog_env.statuses()
    # ready() sends one, then at most one per 0.5 s: about 3 in 1.3 s (not one per 0.2 s ping).
    assert 2 <= len(statuses) <= 4, statuses
    assert statuses[0] == "provider=cuda utterances=1 last_latency_ms=212 broker=disconnected"
    assert "broker=connected" in statuses[1]


def test_describe_formats_strings_and_mappings():
    assert describe(None) is None
    assert describe("listening\non mic") == "listening on mic"
    assert describe({"a": 1, "b": None, "latency_ms": 0.5, "broker": True}) == "a=1 latency_ms=0.5 broker=connected"


def test_a_failing_status_callable_does_not_stop_the_pings(watchdog_env):
    progress = Progress()
    ticker = Ticker(progress)

    def broken():
        raise RuntimeError("bug in the status callable")

    dog = Watchdog(progress, status=broken, audio_timeout_s=5, decode_timeout_s=5, status_interval_s=0.1).start()
    dog.ready()
    start = time.monotonic()
    time.sleep(0.7)
    dog.stop()
    ticker.stop()
    assert len(watchdog_env.pings(since=start)) >= 2


def test_no_thread_without_a_service_manager(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    dog = Watchdog(Progress()).start()
    assert dog._thread is None
    assert dog.ready() is False
    dog.stop()


# -------------------------------------------------------------------------------------- logging
@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_stderr_lines_carry_the_fields_and_drop_the_text(restore_logging, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    assert setup_logging(LoggingSettings(journald="off"), stream=out) == "stderr"
    log = logging.getLogger("agent.test")
    log.info("final published", extra={"EVENT": "final", "UTTERANCE_ID": 7, "LATENCY_MS": 212.45678,
                                       "PROVIDER": "cuda", "TEXT": "what was said"})
    log.debug("not shown at info")
    line = out.getvalue()
    assert line == "INFO agent.test: final published EVENT=final UTTERANCE_ID=7 LATENCY_MS=212.457 PROVIDER=cuda\n"


def test_log_text_keeps_the_text_for_debugging(restore_logging):
    out = io.StringIO()
    setup_logging(LoggingSettings(journald="off", log_text=True, level="debug"), stream=out)
    logging.getLogger("agent.test").debug("final", extra={"TEXT": "hello there"})
    assert out.getvalue() == 'DEBUG agent.test: final TEXT="hello there"\n'


def test_verbose_lowers_the_level_and_a_second_setup_replaces_the_first(restore_logging):
    out = io.StringIO()
    setup_logging(LoggingSettings(level="warning", journald="off"), stream=out)
    setup_logging(LoggingSettings(level="warning", journald="off"), verbose=1, stream=out)
    logging.getLogger("agent.test").info("shown once")
    assert out.getvalue() == "INFO agent.test: shown once\n"


def test_stderr_into_the_journal_gets_syslog_priorities(restore_logging, tmp_path):
    # systemd sets JOURNAL_STREAM=dev:ino of the stream it connected to stderr.
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert service_logging.journal_stream(stream, env)
        setup_logging(LoggingSettings(journald="off"), stream=stream, env=env)
        logging.getLogger("agent.test").warning("two\nlines", extra={"EVENT": "x"})
    assert (tmp_path / "stream").read_text() == "<4>WARNING agent.test: two EVENT=x\n<4>lines\n"


def test_journald_handler_sends_structured_fields(restore_logging):
    if service_logging.journal_handler_class() is None:
        pytest.skip("systemd-python is not installed (the journald extra)")
    sent = []
    backend = setup_logging(LoggingSettings(journald="on"),
                            journal_sender=lambda message, /, **fields: sent.append((message, fields)))
    assert backend == "journald"
    logging.getLogger("agent.test").info("final", extra={"EVENT": "final", "UTTERANCE_ID": 3, "TEXT": "secret"})
    (message, fields), = sent
    assert message == "final"
    assert fields["EVENT"] == "final" and fields["UTTERANCE_ID"] == 3
    assert fields["SYSLOG_IDENTIFIER"] == "stt-agent" and fields["PRIORITY"] == "6"
    assert "TEXT" not in fields  # privacy: log_text is off


def test_journald_on_without_systemd_python_falls_back_to_stderr(restore_logging, monkeypatch):
    monkeypatch.setattr(service_logging, "journal_handler_class", lambda: None)
    out = io.StringIO()
    assert setup_logging(LoggingSettings(journald="on"), stream=out) == "stderr"
    assert "systemd-python is not installed" in out.getvalue()


def test_journald_auto_outside_systemd_uses_stderr(restore_logging):
    out = io.StringIO()
    assert setup_logging(LoggingSettings(journald="auto"), stream=out, env={}) == "stderr"
