"""Fixtures shared by the test modules: tiny models, and real Mosquitto brokers."""

from __future__ import annotations

import pytest

import tiny_models as tm
from mosquitto_fixture import broker_fixture, make_broker_fixture  # noqa: F401 - registers `broker`, `make_broker`


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny sherpa-onnx style model directory with SenseVoice's exact I/O contract."""
    return tm.write_sherpa(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session", autouse=True)
def _health_files_in_tmp(tmp_path_factory):
    """Every agent the tests start, in-process or as a subprocess, writes its health file here: never into
    /run/stt-agent or /tmp, where a real agent on this box keeps its own (watchdog.health_file: auto)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RUNTIME_DIRECTORY", str(tmp_path_factory.mktemp("runtime")))
        # Nor their MQTT outbox into a real agent's state directory: without it, outbox: auto is memory.
        patch.delenv("STATE_DIRECTORY", raising=False)
        yield
