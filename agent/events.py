"""What a listening stream tells the sinks: typed, frozen events, stamped with who and when.

The pipeline builds these; every sink (JSON lines, MQTT, a network client) receives the same
`Stamped` objects and turns them into the one documented JSON form (agent/wire.py, docs/EVENTS.md)
only at its edge. An `Emitter` per stream numbers them (`seq`) and hands them to the sinks in
that order, from whichever thread produced them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Optional, Protocol, Sequence, Union

from agent.recognizer.result import Recognition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechStarted:
    """The VAD heard an utterance begin at `at` (stream seconds); reported min_speech_ms later."""

    type: ClassVar[str] = "speech_start"
    utterance_id: int
    at: float
    at_wall: Optional[float]  # Unix time of `at`, when the stream runs in real time
    detected_wall: Optional[float]
    vad_delay_ms: Optional[float]  # `detected` -> emitted


@dataclass(frozen=True)
class SpeechEnded:
    type: ClassVar[str] = "speech_end"
    utterance_id: int
    at: float
    at_wall: Optional[float]
    detected_wall: Optional[float]
    vad_delay_ms: Optional[float]
    reason: str  # endpoint | max_length | gap | flush


@dataclass(frozen=True)
class Partial:
    """The open utterance decoded so far."""

    type: ClassVar[str] = "partial"
    utterance_id: int
    result: Recognition
    audio_start: float  # stream seconds
    audio_end: float
    audio_start_wall: Optional[float]
    audio_end_wall: Optional[float]
    queue_ms: float
    decode_ms: float


@dataclass(frozen=True)
class Final:
    """An utterance's result; its tokens' times are stream seconds."""

    type: ClassVar[str] = "final"
    utterance_id: int
    result: Recognition
    audio_start: float
    audio_end: float
    audio_start_wall: Optional[float]
    audio_end_wall: Optional[float]
    queue_ms: float
    decode_ms: float
    endpoint_delay_ms: Optional[float]  # end of speech -> emitted; None when not in real time
    speculative: bool


@dataclass(frozen=True)
class Emotion:
    """An utterance's emotion, for controllers that only care about mood (follows its final)."""

    type: ClassVar[str] = "emotion"
    utterance_id: int
    label: str
    scores: Dict[str, float]
    confidence: float


@dataclass(frozen=True)
class Language:
    type: ClassVar[str] = "language"
    utterance_id: int
    label: str
    scores: Dict[str, float]
    confidence: float


@dataclass(frozen=True)
class Problem:
    """Something the agent could not do: a decode that failed, a command it refused."""

    type: ClassVar[str] = "error"
    source: str  # pipeline | command | agent
    code: str
    message: str
    utterance_id: Optional[int] = None
    request: Optional[str] = None  # a refused command's payload (first 500 bytes)
    request_id: Union[str, int, None] = None


Event = Union[SpeechStarted, SpeechEnded, Partial, Final, Emotion, Language, Problem]


@dataclass(frozen=True)
class Stamped:
    """An event as the sinks receive it: from which device, in which run, its number, when."""

    device_id: str
    session: str  # 8 hex digits, new at every start
    seq: int  # +1 per event of this device in this session
    ts: float  # Unix time it was stamped
    event: Event = field(compare=False)


class Sink(Protocol):
    """Where events go. `publish` is called from the pipeline and decode threads: it must never
    block on I/O it does not own nor raise; `close` delivers what it can within its own bound."""

    def publish(self, stamped: Stamped) -> None: ...

    def close(self) -> None: ...


def new_session() -> str:
    return secrets.token_hex(4)


class Emitter:
    """Numbers one device's events and hands them to every sink, in order, from any thread."""

    def __init__(self, device_id: str, session: str, sinks: Sequence[Sink] = (), last_seq: int = 0):
        """`last_seq`: the device's last number in this session (a device that reconnects goes on counting)."""
        self.device_id = device_id
        self.session = session
        self.sinks = list(sinks)
        self._seq = last_seq
        self._lock = threading.Lock()

    def emit(self, event: Event) -> Stamped:
        with self._lock:  # seq order is delivery order, whichever thread emits
            self._seq += 1
            stamped = Stamped(self.device_id, self.session, self._seq, round(time.time(), 3), event)
            for sink in self.sinks:
                try:
                    sink.publish(stamped)
                except Exception:  # a sink's bug must not cost the other sinks their event
                    log.exception("sink %s failed on a %s event", type(sink).__name__, event.type)
        return stamped

    def attach(self, sink: Sink) -> None:
        """A sink for this device's events from now on (a connection's socket)."""
        with self._lock:
            self.sinks = [*self.sinks, sink]

    def detach(self, sink: Sink) -> None:
        with self._lock:
            self.sinks = [s for s in self.sinks if s is not sink]

    @property
    def last_seq(self) -> int:
        return self._seq
