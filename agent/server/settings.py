"""Settings of the network ingest server (the `server` section): devices streaming audio in over WebSocket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from agent.config_schema import section, setting

AUTH_MODES = ("token", "none")


@dataclass
class ServerTlsSettings:
    cert_file: Optional[str] = setting(  # noqa: UP045 - config_schema recognises typing.Union only
        None, "PEM certificate (chain) the server presents: wss:// instead of ws://. null = plain WebSocket.")
    key_file: Optional[str] = setting(None, "Private key (PEM) of cert_file.")  # noqa: UP045

    def check(self):
        if (self.cert_file is None) != (self.key_file is None):
            yield "cert_file", "cert_file and key_file go together: give both or neither"


@dataclass
class WyomingSettings:
    enabled: bool = setting(
        False, "Serve Home Assistant's Wyoming protocol (speech-to-text) with `run` or `serve`: HA sends each "
               "utterance and gets the transcript, with emotion, language and their scores in its data.")
    uri: str = setting("tcp://0.0.0.0:10300", "Where to listen: tcp://HOST:PORT or unix:///path/to/socket.")
    zeroconf: bool = setting(
        True, "Announce the service on the local network (mDNS _wyoming._tcp.local.) so Home Assistant finds "
              "it by itself; off on hosts without multicast.")
    endpoint: bool = setting(
        True, "Detect the end of speech here (our VAD and speculative final) and say so to Home Assistant "
              "(requires_external_vad false): the transcript comes right after the speaker stops, not after the "
              "satellite's own silence timeout. false: the client ends each utterance with audio-stop.")
    endpoint_silence_ms: int = setting(
        700, "With endpoint on: the silence that ends a command (Home Assistant's own default is 700 ms; the "
             "live pipeline's segmenter.endpoint_silence_ms is tuned for conversation).", min=64, max=5000)
    no_speech_timeout_s: float = setting(
        8.0, "With endpoint on: a transcribe that hears no speech for this long gets an empty transcript.",
        min=1.0, max=120.0)
    device_id: str = setting(
        "", "Device id of Wyoming clients' events on MQTT (<prefix>/<device_id>/...); empty = "
            "wyoming-<client address>.")

    def check(self):
        from urllib.parse import urlparse

        parsed = urlparse(self.uri)
        if parsed.scheme not in ("tcp", "unix") or (parsed.scheme == "tcp" and not parsed.port):
            yield "uri", f"{self.uri!r} is not tcp://HOST:PORT or unix:///path"


@dataclass
class ServerMetricsSettings:
    enabled: bool = setting(
        True, "Serve Prometheus metrics at GET /metrics on the server's port, without a token (as Prometheus "
              "scrapes); /healthz and /readyz are always there. false: /metrics answers 404.")
    per_device_labels: bool = setting(
        False, "Label events and end-of-speech-to-final times with the device id. Off: one series per metric, "
               "whatever the fleet; on, each device id adds series to every scrape (up to 10,000 remembered).")


@dataclass
class ServerHttpSettings:
    max_upload_bytes: int = setting(
        200 * 1024 * 1024, "Largest file POST /v1/audio/transcriptions takes (200 MiB: 1 h 49 min of 16 kHz 16-bit "
                           "WAV, many hours of MP3 or Opus); larger is refused with 413.", min=1024, max=1 << 40)
    max_upload_s: float = setting(
        14400.0, "Longest audio an upload may hold, in seconds (4 hours); longer is refused with 413.", min=1.0,
        max=604800.0)


@dataclass
class ServerSettings:
    enabled: bool = setting(
        False, "Accept audio streams from devices at ws://HOST:PORT/ws/stt/<device_id> (stt-agent serve turns it "
               "on by itself; with run, the microphone and the network streams share one recognizer).")
    host: str = setting("0.0.0.0", "Address to listen on (0.0.0.0: every interface; 127.0.0.1: this box only).")
    port: int = setting(8765, "TCP port.", min=1, max=65535)
    auth: str = setting(
        "token", "token: every device presents a token from tokens_file (Authorization: Bearer TOKEN, or ?token=TOKEN "
                 "for devices that cannot set headers); none: anyone who reaches the port may stream (warned at "
                 "start; a trusted network only).", choices=AUTH_MODES)
    tokens_file: Optional[str] = setting(  # noqa: UP045
        None, "File of tokens, one per line: TOKEN (any device) or DEVICE_ID TOKEN (that device only); # comments. "
              "Tokens are never logged.")
    tls: ServerTlsSettings = section(ServerTlsSettings, "TLS for the server (wss://).")
    max_streams: int = setting(32, "Streams at once; one more is refused with HTTP 503.", min=1, max=10000)
    admission_load: float = setting(
        0.85, "Refuse a new stream (HTTP 503) while the model spends more than this share of the last minute on "
              "finals: one more would slow every stream's finals down.", min=0.1, max=1.0)
    max_pending: int = setting(
        64, "Connections that have not sent a request yet (an HTTP/WebSocket handshake, a Wyoming client's first "
            "request), on each port. At the cap the one waiting longest is closed: a device that speaks does so "
            "within milliseconds.", min=1, max=100000)
    handshake_timeout_s: float = setting(
        10.0, "How long a connection may take to send its first request before it is closed.", min=0.5,
        max=600.0)
    max_frame_bytes: int = setting(
        65536, "Largest message a client may send (64 KiB: 2 s of 16 kHz s16le); a larger one closes the "
               "connection (code 1009).", min=1024, max=16777216)
    idle_timeout_s: float = setting(
        30.0, "A connection that sends nothing for this long is closed.", min=1.0, max=86400.0)
    max_session_s: float = setting(
        0.0, "Longest WebSocket stream (/ws/stt and /v1/realtime) in seconds, less up to 10% at random: at the "
             "first pause between utterances after it, the server closes it with code 4001 (realtime: after a "
             "session_expired error event) and the device reconnects, perhaps to "
             "another replica (docs/SCALING.md). A stream that never pauses is closed segmenter.max_utterance_s "
             "later, its open utterance finished. 0 = no limit.", min=0.0, max=604800.0)
    max_ahead_s: float = setting(
        2.0, "How far ahead of real time a client may send audio before the server stops reading its socket "
             "(TCP flow control paces it): a fast sender cannot queue unbounded audio.", min=0.1, max=60.0)
    batch_size: int = setting(
        0, "Finals (of any streams) decoded in one model run when several are ready. 0 = auto: 4 on the CPU "
           "provider, 8 on CUDA/TensorRT.", min=0, max=64)
    wyoming: WyomingSettings = section(WyomingSettings, "Home Assistant's Wyoming speech-to-text protocol.")
    http: ServerHttpSettings = section(
        ServerHttpSettings, "OpenAI's audio API on the server's port: /v1/audio/transcriptions, /v1/models "
                            "(docs/OPENAI.md).")
    metrics: ServerMetricsSettings = section(
        ServerMetricsSettings, "Prometheus metrics and the /healthz, /readyz probes (docs/STREAMING.md).")

    def check(self):
        if self.enabled and self.auth == "token" and not self.tokens_file:
            yield "tokens_file", "auth is token: name the file of tokens (or set auth: none, for a trusted network)"

    def resolved_batch_size(self, provider: str) -> int:
        if self.batch_size:
            return self.batch_size
        return 4 if provider == "cpu" else 8
