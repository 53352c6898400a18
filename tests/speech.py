"""Synthesized test speech (espeak-ng, a Debian package) for the VAD, segmenter and pipeline tests."""

from __future__ import annotations

import subprocess

import numpy as np

from agent.audio_file import load_audio


def espeak(tmp_path, text, name="speech.wav"):
    """Speech from espeak-ng as 16 kHz float32 on the int16 scale, leading and trailing silence trimmed."""
    path = tmp_path / name
    subprocess.run(["espeak-ng", "-v", "en", "-s", "160", "-w", str(path), text], check=True, capture_output=True)
    x = load_audio(path)
    loud = np.flatnonzero(np.abs(x) > 300)
    return x[loud[0]:loud[-1] + 1]
