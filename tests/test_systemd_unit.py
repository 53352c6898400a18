"""The systemd unit: `systemd-analyze verify` is clean, the exposure score stays <= 2.5, key directives hold.

`verify` checks that ExecStart= binaries exist, so it runs on a copy of the unit in a temporary
directory with /opt/stt-agent/venv/bin/stt-agent replaced by a stub; the Jetson drop-in is
verified with it (a `<unit>.d/` directory beside the copy).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "stt-agent.service"
JETSON_DROPIN = ROOT / "systemd" / "jetson-devices.conf"
BINARY = "/opt/stt-agent/venv/bin/stt-agent"
MAX_EXPOSURE = 2.5

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze not installed (apt-get install systemd)")


def directives(path: Path) -> dict[str, list[str]]:
    """key -> values in file order (keys may repeat), comments and section headers left out."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(values: dict, key: str) -> str:
    assert key in values, f"{key}= missing"
    return values[key][-1]


@pytest.fixture
def unit_copy(tmp_path):
    stub = tmp_path / "stt-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "stt-agent.service"
    copy.write_text(UNIT.read_text().replace(BINARY, str(stub)))
    return copy


@needs_analyze
def test_verify_is_clean(unit_copy):
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit_copy)], capture_output=True, text=True)
    # Unknown keys and bad values are only warnings (exit 0): any output at all is a failure.
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@needs_analyze
def test_verify_with_the_jetson_dropin_is_clean(unit_copy):
    dropins = unit_copy.parent / "stt-agent.service.d"
    dropins.mkdir()
    shutil.copy(JETSON_DROPIN, dropins / "jetson-devices.conf")
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit_copy)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@needs_analyze
def test_verify_catches_a_typo(unit_copy):
    """The check above is not vacuous: a misspelt directive produces output."""
    unit_copy.write_text(unit_copy.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit_copy)], capture_output=True, text=True)
    assert "ProtectHomes" in proc.stdout + proc.stderr


def exposure(path: Path) -> float:
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(path)],
                          capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", text)
    assert match, f"no 'Overall exposure level' line (systemd too old for --offline?):\n{text}"
    return float(match.group(1))


@needs_analyze
def test_exposure_score_is_low():
    score = exposure(UNIT)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


@needs_analyze
def test_exposure_score_notices_weakening(tmp_path):
    """The parsed score moves when hardening is taken away (guards the regex, not just the unit)."""
    weak = tmp_path / "stt-agent.service"
    weak.write_text("\n".join(line for line in UNIT.read_text().splitlines()
                              if not line.startswith(("Protect", "SystemCallFilter", "CapabilityBoundingSet"))))
    assert exposure(weak) > exposure(UNIT) + 1


def test_key_directives():
    d = directives(UNIT)
    assert one(d, "Type") == "notify"
    assert one(d, "NotifyAccess") == "main"
    assert "78" in one(d, "RestartPreventExitStatus").split()
    assert one(d, "Restart") == "on-failure"
    assert 5 <= int(one(d, "WatchdogSec")) <= 120
    assert int(one(d, "TimeoutStopSec")) <= 60
    assert one(d, "ExecStartPre") == f"{BINARY} check-config --config /etc/stt-agent/config.yaml"
    assert one(d, "ExecStart") == f"{BINARY} run --config /etc/stt-agent/config.yaml"
    assert one(d, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(d, "User") == "stt-agent"
    assert set(one(d, "SupplementaryGroups").split()) == {"audio", "video"}
    assert one(d, "StateDirectory") == one(d, "CacheDirectory") == one(d, "ConfigurationDirectory") == "stt-agent"
    assert one(d, "ProtectSystem") == "strict"
    assert one(d, "DevicePolicy") == "closed"
    assert "char-alsa rw" in d["DeviceAllow"]
    assert one(d, "CapabilityBoundingSet") == "" and one(d, "AmbientCapabilities") == ""
    assert one(d, "UMask") == "0077"
    # sounddevice's cffi callback needs writable+executable memory: this must never be switched on.
    assert one(d, "MemoryDenyWriteExecute").lower() in ("no", "false", "0", "off")
    # onnxruntime reads /proc/cpuinfo to pick its kernels.
    assert d.get("ProcSubset", ["all"])[-1] == "all"
    assert one(d, "WantedBy") == "multi-user.target"


def test_jetson_dropin_allows_the_gpu_nodes():
    d = directives(JETSON_DROPIN)
    allowed = {v.split()[0] for v in d["DeviceAllow"]}
    assert {"/dev/nvmap", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-gpu"} <= allowed
    assert all(v.endswith(" rw") for v in d["DeviceAllow"])
