"""The CUDA and Jetson Dockerfiles are the CPU one (which CI builds and runs) with another base image
and ONNX Runtime package, and nothing else: their base images cannot be pulled in CI, so whatever
else differed would never have been built."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"
# The only lines a variant may change: which base image, which ONNX Runtime and where it comes from.
VARIANT_ARG = re.compile(r"^ARG (BASE_IMAGE|ORT_PACKAGE|ORT_INDEX_URL)=(.*)$")


def body(path: Path) -> tuple[list[str], dict[str, str]]:
    """The instructions after the leading comment block, with the variant ARGs' defaults taken out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    args, out = {}, []
    for line in lines[start:]:
        m = VARIANT_ARG.match(line)
        if m and m.group(1) not in args:
            args[m.group(1)] = m.group(2)
            line = f"ARG {m.group(1)}=..."
        out.append(line)
    return out, args


@pytest.mark.parametrize("variant, base, ort", [
    ("Dockerfile.x86-cuda", "nvidia/cuda:", "onnxruntime-gpu"),
    ("Dockerfile.jetson", "nvcr.io/nvidia/l4t-jetpack:", "onnxruntime-gpu"),
])
def test_variants_differ_only_in_base_and_onnxruntime(variant, base, ort):
    cpu, cpu_args = body(DOCKER / "Dockerfile")
    other, args = body(DOCKER / variant)
    diff = "\n".join(difflib.unified_diff(cpu, other, "docker/Dockerfile", f"docker/{variant}", lineterm=""))
    assert other == cpu, f"apply the same change to both files:\n{diff}"
    assert cpu_args["BASE_IMAGE"].startswith("debian:") and cpu_args["ORT_PACKAGE"].startswith("onnxruntime>=")
    assert args["BASE_IMAGE"].startswith(base) and args["ORT_PACKAGE"].startswith(ort)


def test_the_image_is_healthchecked_and_not_root():
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    # /healthz where the server listens, else the health file (agent/server/probes.py)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"/opt/stt-agent/venv/bin/python\", \"-m\", \"agent.server.probes\"\]",
                     text, re.M)
    # the MQTT outbox ($STATE_DIRECTORY, mqtt.outbox: auto) is a volume the agent's user owns
    state = re.search(r"^\s+STATE_DIRECTORY=(\S+) \\$", text, re.M).group(1)
    assert state in re.search(r"^VOLUME \[(.*)\]$", text, re.M).group(1)
    assert re.search(rf"mkdir -p [^\n]*{state}", text) and "chown -R stt-agent:stt-agent /var/lib/stt-agent" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
