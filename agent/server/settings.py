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
    max_frame_bytes: int = setting(
        65536, "Largest message a client may send (64 KiB: 2 s of 16 kHz s16le); a larger one closes the "
               "connection (code 1009).", min=1024, max=16777216)
    idle_timeout_s: float = setting(
        30.0, "A connection that sends nothing for this long is closed.", min=1.0, max=86400.0)
    max_session_s: float = setting(
        0.0, "Longest connection in seconds, after which its open utterance is finished and it is closed "
             "(0 = no limit).", min=0.0, max=604800.0)
    max_ahead_s: float = setting(
        2.0, "How far ahead of real time a client may send audio before the server stops reading its socket "
             "(TCP flow control paces it): a fast sender cannot queue unbounded audio.", min=0.1, max=60.0)
    batch_size: int = setting(
        0, "Finals (of any streams) decoded in one model run when several are ready. 0 = auto: 4 on the CPU "
           "provider, 8 on CUDA/TensorRT.", min=0, max=64)

    def check(self):
        if self.enabled and self.auth == "token" and not self.tokens_file:
            yield "tokens_file", "auth is token: name the file of tokens (or set auth: none, for a trusted network)"

    def resolved_batch_size(self, provider: str) -> int:
        if self.batch_size:
            return self.batch_size
        return 4 if provider == "cpu" else 8
