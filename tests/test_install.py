"""scripts/install.sh under --root (install, idempotence, uninstall, purge, dry run) and scripts/healthcheck.sh.

The install runs with --no-pip (the virtualenv is created, the slow pip install of the whole stack
is skipped) and --no-apt; nothing outside the temporary root is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install.sh"
HEALTHCHECK = REPO / "scripts" / "healthcheck.sh"
UNIT = "etc/systemd/system/stt-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/stt-agent.service"
CONFIG = "etc/stt-agent/config.yaml"
MODELS = "var/lib/stt-agent/models"
VENV = "opt/stt-agent/venv"
DROPIN = "etc/systemd/system/stt-agent.service.d/jetson-devices.conf"


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-apt", "--no-pip",
                           "--python", sys.executable, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tree(root: Path) -> dict[str, str]:
    """Every file, directory and link under root: kind, mode and content hash or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = f"link -> {os.readlink(path)}"
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
        else:
            out[rel] = f"file {stat.S_IMODE(st.st_mode):o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return out


def files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()]


def test_install_creates_the_tree_and_a_second_run_changes_nothing(tmp_path):
    first = install(tmp_path, "--cpu")
    assert "changed: created virtualenv /opt/stt-agent/venv" in first.stdout
    assert "changed: enabled stt-agent.service" in first.stdout
    # The unit as shipped, enabled the way `systemctl enable` does it.
    assert (tmp_path / UNIT).read_text() == (REPO / "systemd" / "stt-agent.service").read_text()
    assert os.readlink(tmp_path / WANTS) == "/etc/systemd/system/stt-agent.service"
    assert (tmp_path / VENV / "bin" / "python").exists()
    assert (tmp_path / MODELS).is_dir()
    assert os.access(tmp_path / "opt/stt-agent/healthcheck.sh", os.X_OK)
    assert not (tmp_path / DROPIN).exists()  # not a Jetson
    config = (tmp_path / CONFIG).read_text()
    assert "  model_dir: /var/lib/stt-agent/models/sensevoice-small-int8\n" in config
    assert "  providers: [cpu]\n" in config
    assert stat.S_IMODE((tmp_path / CONFIG).stat().st_mode) == 0o640
    # Only the model path changed from the repo's config: every documented key is still there.
    repo_config = (REPO / "config.yaml").read_text().splitlines()
    changed_lines = [a for a, b in zip(repo_config, config.splitlines()) if a != b]
    assert len(config.splitlines()) == len(repo_config)
    assert all(line.startswith("  model_dir: ") for line in changed_lines) and len(changed_lines) <= 1

    before = tree(tmp_path)
    second = install(tmp_path, "--cpu")
    assert "nothing changed" in second.stdout
    assert "changed:" not in second.stdout
    assert tree(tmp_path) == before


def test_the_installed_config_validates(tmp_path):
    install(tmp_path, "--cpu")
    proc = subprocess.run([sys.executable, "-m", "agent", "check-config", "--config", str(tmp_path / CONFIG)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_an_existing_config_is_never_overwritten(tmp_path):
    (tmp_path / "etc/stt-agent").mkdir(parents=True)
    (tmp_path / CONFIG).write_text("recognizer:\n  model_dir: /somewhere/mine\n")
    proc = install(tmp_path, "--cpu")
    assert "config.yaml" not in proc.stdout
    assert (tmp_path / CONFIG).read_text() == "recognizer:\n  model_dir: /somewhere/mine\n"


def test_a_changed_unit_is_put_back(tmp_path):
    install(tmp_path, "--cpu")
    (tmp_path / UNIT).write_text("[Service]\nExecStart=/bin/true\n")
    proc = install(tmp_path, "--cpu")
    assert "changed: installed unit /etc/systemd/system/stt-agent.service" in proc.stdout
    assert (tmp_path / UNIT).read_text() == (REPO / "systemd" / "stt-agent.service").read_text()


def test_uninstall_keeps_config_and_models_and_purge_removes_everything(tmp_path):
    install(tmp_path, "--cpu")
    (tmp_path / MODELS / "sensevoice-small-int8").mkdir()
    (tmp_path / MODELS / "sensevoice-small-int8" / "model.int8.onnx").write_bytes(b"weights")
    proc = install(tmp_path, "--uninstall")
    assert "removed unit" in proc.stdout and "removed virtualenv" in proc.stdout
    assert not (tmp_path / UNIT).exists() and not (tmp_path / WANTS).is_symlink()
    assert not (tmp_path / "opt/stt-agent").exists()
    assert (tmp_path / CONFIG).exists()
    assert (tmp_path / MODELS / "sensevoice-small-int8" / "model.int8.onnx").read_bytes() == b"weights"
    assert "kept /etc/stt-agent/config.yaml /var/lib/stt-agent/models" in proc.stdout

    assert "nothing changed" in install(tmp_path, "--uninstall").stdout  # idempotent too

    proc = install(tmp_path, "--uninstall", "--purge")
    assert "removed config /etc/stt-agent" in proc.stdout
    assert files(tmp_path) == []


def test_dry_run_changes_nothing(tmp_path):
    proc = install(tmp_path, "--cpu", "--dry-run")
    assert "would: created virtualenv /opt/stt-agent/venv" in proc.stdout
    assert "would: installed unit /etc/systemd/system/stt-agent.service" in proc.stdout
    assert "would be made" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_jetson_gets_the_device_dropin_and_a_gpu_config(tmp_path):
    install(tmp_path, "--gpu", "--jetson")
    assert (tmp_path / DROPIN).read_text() == (REPO / "systemd" / "jetson-devices.conf").read_text()
    config = (tmp_path / CONFIG).read_text()
    assert "  providers: [tensorrt, cuda, cpu]\n" in config
    assert "  model_dir: /var/lib/stt-agent/models/sensevoice-small-fp32\n" in config
    install(tmp_path, "--uninstall")
    assert not (tmp_path / DROPIN).exists()


def test_jetson_gpu_without_nvidia_wheel_is_a_clear_error(tmp_path):
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path), "--no-apt", "--gpu", "--jetson"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "--ort-wheel" in proc.stderr and "Jetson" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_usage(tmp_path):
    proc = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 1 and "no such directory" in proc.stderr


# ----------------------------------------------------------------------------------- healthcheck
@pytest.fixture
def fake_systemd(tmp_path):
    """systemctl and journalctl stubs whose answers the test sets through files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (bin_dir / "systemctl").write_text(f"""#!/bin/sh
case "$1" in
  is-active) cat {state}/active; [ "$(cat {state}/active)" = active ] ;;
  show) case "$3" in
          StatusText) cat {state}/status 2>/dev/null ;;
          Result) echo watchdog ;;
          ActiveEnterTimestamp) echo "Mon 2026-01-05 10:00:00 UTC" ;;
        esac ;;
esac
""")
    (bin_dir / "journalctl").write_text(f"""#!/bin/sh
for a in "$@"; do [ "$a" = err ] && {{ cat {state}/errors 2>/dev/null; exit 0; }}; done
cat {state}/journal 2>/dev/null; exit 0
""")
    for tool in ("systemctl", "journalctl"):
        (bin_dir / tool).chmod(0o755)
    (state / "active").write_text("active\n")

    def run(*args):
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        return subprocess.run(["bash", str(HEALTHCHECK), *args], capture_output=True, text=True, env=env)

    run.state = state
    return run


def test_healthy(fake_systemd):
    (fake_systemd.state / "status").write_text("provider=cuda utterances=3\n")
    (fake_systemd.state / "journal").write_text("INFO listening on mic\n")
    proc = fake_systemd()
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("healthy: stt-agent active since Mon 2026-01-05")
    assert "status: provider=cuda utterances=3" in proc.stdout
    assert len(proc.stdout.splitlines()) == 1


@pytest.mark.parametrize("setup, reason", [
    ({"active": "failed\n"}, "failed (result: watchdog"),
    ({"active": "inactive\n"}, "not running (inactive)"),
    ({"active": "activating\n"}, "starting"),
    ({"status": "stalled: no audio consumed for 16 s (limit 15 s)\n"}, "stalled: no audio consumed"),
    ({"journal": "stt-agent.service: Watchdog timeout (limit 30s)!\n"}, "1 watchdog timeout(s) in the last 10 min"),
    ({"journal": "stt-agent.service: Scheduled restart job, restart counter is at 1.\n"}, "restarted 1 time(s)"),
    ({"errors": "ERROR agent.pipeline.live: stopped with finals still undecoded\n"}, "1 error(s) in the last 10 min"),
])
def test_unhealthy(fake_systemd, setup, reason):
    for name, text in setup.items():
        (fake_systemd.state / name).write_text(text)
    proc = fake_systemd()
    assert proc.returncode == 1
    assert proc.stdout.startswith("unhealthy: stt-agent: ") and reason in proc.stdout, proc.stdout
    assert len(proc.stdout.splitlines()) == 1


def test_healthcheck_thresholds_and_usage(fake_systemd):
    (fake_systemd.state / "journal").write_text("stt-agent.service: Scheduled restart job, restart counter is at 1.\n")
    assert fake_systemd("--max-restarts", "1", "--minutes", "5").returncode == 0
    assert fake_systemd("--minutes", "soon").returncode == 2


def test_health_topic_unavailable_is_only_noted(fake_systemd):
    proc = fake_systemd("--mqtt-topic", "stt-agent/health", "--mqtt-port", str(_free_port()))
    assert proc.returncode == 0, proc.stdout
    if shutil.which("mosquitto_sub"):
        assert "unreachable or no retained message" in proc.stdout
    else:
        assert "no mosquitto_sub" in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    if not (shutil.which("mosquitto") and shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")):
        pytest.skip("needs mosquitto and mosquitto-clients")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([shutil.which("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=5)


def agent_health(age_s: float = 0.0) -> str:
    """The agent's health snapshot as published (docs/EVENTS.md), `age_s` seconds old."""
    return json.dumps({
        "schema_version": 1, "type": "health", "device_id": "box1", "session": "7efaaabb",
        "ts": round(time.time() - age_s, 3), "version": "0.1.0", "uptime_s": 3600.2, "utterances": 41,
        "latency_ms": {"p50": 434.4, "p95": 702.0, "count": 41}, "provider": "cpu",
        "audio_device": {"name": "/var/lib/stt-agent-audio/audio", "state": "waiting_for_device"},
        "mqtt": {"connected": True, "broker": "localhost:1883", "queued": 0, "inflight": 0, "published": 123,
                 # "offline" here counts partials skipped in an outage: no verdict on the agent.
                 "dropped": {"outbox_full": 0, "expired": 0, "offline": 12}, "errors": 0, "last_error": None}})


@pytest.mark.parametrize("message, status, healthy, says", [
    (agent_health(), "online", True, "health topic ok, status online"),
    (agent_health(), None, True, "health topic ok"),
    (agent_health(age_s=600), "online", False, "health topic stt-agent/box1/health was published 6"),
    (agent_health(), "offline", False, "stt-agent/box1/status says offline"),
    ('{"status": "online", "provider": "cuda"}', None, True, "health topic ok"),
    ('{"status": "offline"}', None, False, "health topic stt-agent/box1/health says"),
    ('{"healthy": false, "reason": "stalled"}', None, False, "health topic stt-agent/box1/health says"),
])
def test_retained_health_topic(fake_systemd, broker, message, status, healthy, says):
    subprocess.run(["mosquitto_pub", "-p", str(broker), "-t", "stt-agent/box1/health", "-r", "-m", message], check=True)
    if status is not None:
        subprocess.run(["mosquitto_pub", "-p", str(broker), "-t", "stt-agent/box1/status", "-r", "-m", status],
                       check=True)
    proc = fake_systemd("--mqtt-topic", "stt-agent/box1/health", "--mqtt-port", str(broker))
    assert proc.returncode == (0 if healthy else 1), proc.stdout
    assert says in proc.stdout


def test_the_built_package_carries_the_schemas_commands_are_checked_against(tmp_path):
    """A non-editable install (install.sh, the container) has no docs/: the schemas ship in the package."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("stt_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for schema in ("command", "final", "error", "health"):
        assert f"agent/schemas/{schema}.json" in names
