"""Fixtures shared by the test modules: tiny models, and real Mosquitto brokers."""

from __future__ import annotations

import pytest

import tiny_models as tm
from mosquitto_fixture import broker_fixture, make_broker_fixture  # noqa: F401 - registers `broker`, `make_broker`


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny sherpa-onnx style model directory with SenseVoice's exact I/O contract."""
    return tm.write_sherpa(tmp_path_factory.mktemp("model"))
