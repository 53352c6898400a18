"""Building the paho client from MqttSettings: protocol, credentials, TLS, Last Will, backoff.

Also `diagnose()`: paho reports a failed TCP/TLS connect to on_connect_fail without the reason,
so the publisher asks here (one plain connect + handshake) to log *why*, e.g. a certificate
that does not verify.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError

log = logging.getLogger(__name__)


def read_password(settings) -> str | None:
    """The password from password_file or password_env; a ConfigError naming the source (never the value)."""
    if settings.password_file:
        path = Path(settings.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"mqtt.password_file: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                              f"offset {exc.start}); MQTT passwords are UTF-8") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise ConfigError(f"mqtt.password_file: {path} is empty (the password is its first line)")
        _warn_if_readable_by_others(path)
        return lines[0]
    if settings.password_env:
        value = os.environ.get(settings.password_env)
        if value is None:
            raise ConfigError(f"mqtt.password_env: the environment variable {settings.password_env} is not set")
        return value
    return None


_WARNED_READABLE: set = set()  # one warning per password file per process, however often it is read


def _warn_if_readable_by_others(path: Path) -> None:
    """Once per file: a password file every user of the box can read gives the broker password away."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH and str(path) not in _WARNED_READABLE:
        _WARNED_READABLE.add(str(path))
        log.warning("mqtt.password_file: %s is readable by every user of this machine (mode %03o); "
                    "chmod 600 %s (owned by the agent's user)", path, stat.S_IMODE(mode), path,
                    extra={"EVENT": "password_file_readable"})


def tls_context(tls) -> ssl.SSLContext:
    """Verification on (CA, host name) unless tls.insecure; a ConfigError for unreadable files."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.tls.ca_file: cannot load {tls.ca_file}: {exc}") from None
    if tls.cert_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.tls.cert_file: cannot load {tls.cert_file} / {tls.key_file}: {exc}") from None
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx



class SupervisedClient(mqtt.Client):
    """paho's client whose network thread outlives an exception escaping paho's own loop.

    paho runs `loop_forever` in that thread with no guard: an exception from inside paho (seen: a
    `struct.error` packing a 70,000-character client id) ends the thread, and the client never
    connects again while looking alive. Here the exception goes to `on_thread_error`, which logs
    and counts it and answers how long to wait; then the connection starts over.
    """

    on_thread_error: Callable[[BaseException], float] | None = None

    def _thread_main(self) -> None:  # the target of loop_start()'s thread
        try:
            while not self._thread_terminate:
                try:
                    self.loop_forever(retry_first_connection=True)
                    return
                except Exception as exc:  # noqa: BLE001 - anything here would end the thread silently
                    handler = self.on_thread_error
                    wait = handler(exc) if handler is not None else 1.0
                    self._start_over()
                    deadline = time.monotonic() + wait
                    while not self._thread_terminate and time.monotonic() < deadline:
                        time.sleep(0.05)
        finally:
            self._thread = None

    def _start_over(self) -> None:
        """Drop the socket and connect afresh (the state the failure left is unknown)."""
        try:
            self._sock_close()
        except Exception:  # noqa: BLE001 - already broken
            log.debug("closing the broken MQTT socket failed", exc_info=True)
        self._state = mqtt._ConnectionState.MQTT_CS_CONNECT_ASYNC


def make_client(settings, client_id: str, will_topic: str) -> mqtt.Client:
    v5 = settings.protocol == "5"
    client = SupervisedClient(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        **({} if v5 else {"clean_session": True}))
    if settings.username:
        client.username_pw_set(settings.username, read_password(settings))
    if settings.tls.enabled:
        client.tls_set_context(tls_context(settings.tls))
    client.will_set(will_topic, b"offline", qos=settings.qos.status, retain=True)
    client.reconnect_delay_set(min_delay=settings.reconnect_min_s, max_delay=settings.reconnect_max_s)
    client.max_inflight_messages_set(1000)  # the publisher keeps its own, smaller limit
    client.max_queued_messages_set(0)
    return client


def describe_reason(reason_code) -> str:
    """'Bad user name or password (reason code 134)' from a paho ReasonCode (or an int)."""
    value = getattr(reason_code, "value", reason_code)
    return f"{reason_code} (reason code {value})"


def hint_for(reason_code) -> str:
    value = getattr(reason_code, "value", reason_code)
    if value in (134, 4):  # MQTT 5 Bad user name or password / 3.1.1 bad credentials
        return "; check mqtt.username and the password in mqtt.password_file / mqtt.password_env"
    if value in (135, 5):  # Not authorized: Mosquitto's answer to a wrong password too
        return ("; wrong username or password, or the broker does not allow this user (or anonymous clients): "
                "check mqtt.username and mqtt.password_file / mqtt.password_env")
    if value in (133, 2):  # Client identifier not valid
        return "; check mqtt.client_id"
    return ""


def diagnose(settings, timeout: float = 3.0) -> str:
    """Why a TCP (and TLS) connection to the broker fails now, in one line; '' if it succeeds."""
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=timeout)
    except OSError as exc:
        return f"cannot reach the broker: {exc.strerror or exc}"
    try:
        if settings.tls.enabled:
            try:
                ctx = tls_context(settings.tls)
                with ctx.wrap_socket(sock, server_hostname=settings.host) as tls_sock:
                    tls_sock.settimeout(timeout)
            except ssl.SSLCertVerificationError as exc:
                return (f"TLS certificate of the broker does not verify: {exc.verify_message} "
                        f"(check mqtt.tls.ca_file and that the certificate names {settings.host!r})")
            except ssl.SSLError as exc:
                return f"TLS handshake failed: {exc.reason or exc}"
            except (OSError, ConfigError) as exc:
                return f"TLS handshake failed: {exc}"
        return ""
    finally:
        sock.close()
