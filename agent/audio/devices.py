"""Finding a capture device by name or index, and a format it accepts (PortAudio via sounddevice).

sounddevice is imported lazily: it needs the PortAudio shared library (Debian: libportaudio2), and
file or stdin input must keep working on a machine without it.
"""
from __future__ import annotations

import logging

from agent.audio.blocks import RATE
from agent.errors import UnavailableError

log = logging.getLogger(__name__)


class DeviceUnavailable(Exception):
    """No input device matches, or it accepts no usable format; the message says which and lists inputs."""


def portaudio():
    """The sounddevice module, or an UnavailableError (exit 69) that says what to install."""
    try:
        import sounddevice
    except OSError as exc:  # the module is there, the PortAudio library is not (sounddevice raises OSError)
        raise UnavailableError(f"microphone input (audio.input: mic) needs the PortAudio library, which this "
                               f"system lacks ({_first_line(exc)}): sudo apt-get install libportaudio2; files, "
                               f"stdin, named pipes and serve work without it") from None
    except ImportError as exc:
        raise UnavailableError(f"microphone input (audio.input: mic) needs the sounddevice package "
                               f"({_first_line(exc)}): pip install sounddevice, and sudo apt-get install "
                               f"libportaudio2") from None
    return sounddevice


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def refresh_devices() -> None:
    """Re-initialise PortAudio so that devices plugged in since start-up are listed.

    PortAudio enumerates devices once, in Pa_Initialize; re-initialising is the only way to see a
    replugged USB microphone. It closes every PortAudio stream in the process, so it is only called
    while the microphone's own stream is closed (stt-agent has no other PortAudio user).
    """
    sd = portaudio()
    try:
        sd._terminate()
        sd._initialize()
    except (AttributeError, sd.PortAudioError) as exc:  # private API: degrade to the cached list
        log.debug("could not re-initialise PortAudio: %s", exc)


def input_devices() -> list[dict]:
    """Every device with input channels, as sounddevice describes them (with 'index')."""
    return [d for d in portaudio().query_devices() if d["max_input_channels"] > 0]


def find_input_device(spec: str | int | None) -> dict:
    """The device `spec` names: None/""/"default", an index (int or digits), or a name substring.

    A name matches case-insensitively; an exact name wins over substrings, otherwise the first
    match in PortAudio's order. Names are preferred in config because indices change when USB
    devices come and go.
    """
    sd = portaudio()
    inputs = input_devices()
    listing = ", ".join(f"[{d['index']}] {d['name']}" for d in inputs) or "none"
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default")):
        try:
            return sd.query_devices(kind="input")
        except sd.PortAudioError:
            raise DeviceUnavailable(f"no default input device (inputs: {listing})") from None
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for d in inputs:
            if d["index"] == index:
                return d
        raise DeviceUnavailable(f"no input device with index {index} (inputs: {listing})")
    wanted = spec.strip().lower()
    exact = [d for d in inputs if d["name"].lower() == wanted]
    matches = exact or [d for d in inputs if wanted in d["name"].lower()]
    if not matches:
        raise DeviceUnavailable(f"no input device matches {spec!r} (inputs: {listing})")
    return matches[0]


def choose_format(device: dict, capture_rate: int = 0) -> tuple[int, int]:
    """(rate, channels) to open `device` with, as int16.

    capture_rate 0 means 16 kHz if the device takes it, else its default rate (resampled on the
    reader side). Mono is preferred; some USB microphones only offer stereo.
    """
    sd = portaudio()
    if capture_rate:
        rates = [capture_rate]
    else:
        rates = list(dict.fromkeys([RATE, int(device["default_samplerate"])]))
    channel_options = [1] + ([2] if device["max_input_channels"] >= 2 else [])
    for rate in rates:
        for channels in channel_options:
            try:
                sd.check_input_settings(device=device["index"], samplerate=rate, channels=channels, dtype="int16")
            except (sd.PortAudioError, ValueError):
                continue
            return rate, channels
    raise DeviceUnavailable(f"{device['name']!r} accepts none of int16 x {channel_options} channels "
                         f"at {rates} Hz")
