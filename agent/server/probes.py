"""GET /healthz and /readyz on the server's port, and the container's HEALTHCHECK that asks them.

    /healthz   200 while the network loop answers and the pipeline moves: the watchdog's own verdict
               (Progress.stall: the loop's heartbeat, a decode stuck past watchdog.decode_timeout_s,
               finals waiting with no decode running, the microphone's audio in `run`); 503 and why
    /readyz    200 while a new stream would be admitted; 503 and why while it would be refused
               (server.max_streams streams, the model over server.admission_load), while stopping,
               or while /healthz fails. The server starts listening only once the model is loaded.

Neither needs a token (kubelet and Docker present none); neither counts as pending once its request
arrived, nor as a refusal. `python -m agent.server.probes` is the image's HEALTHCHECK: /healthz where
the server listens, the health file (`stt-agent health`) where nothing listens on server.port (a
microphone-only `run`, or `serve` still loading its model).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from agent.server.loop import NetworkLoop

OK_TEXT = "ok"
# The HEALTHCHECK's own wait for an answer: Docker allows it 5 s (--timeout in docker/Dockerfile).
CHECK_TIMEOUT_S = 3.0


class Probes:
    def __init__(self, net: "NetworkLoop"):
        self.net = net
        self.since = time.monotonic()  # no audio is expected before the server listens

    def add_routes(self, app) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    def health(self) -> Optional[str]:
        """Why the agent is unhealthy, or None."""
        progress = self.net.progress
        if progress is None:  # no watchdog to ask: the loop answering is all there is
            return None
        w = self.net.settings.watchdog
        return progress.stall(w.audio_timeout_s, w.decode_timeout_s, since=self.since)

    def readiness(self) -> Optional[str]:
        """Why a new stream would be refused now, or None."""
        net, s = self.net, self.net.s
        if net.stopping:
            return "the server is stopping"
        if net.registry.full:
            return f"{net.registry.admitted} streams, server.max_streams is {s.max_streams}: new streams are refused"
        load = net.decoder.load()["finals"]
        if load > s.admission_load:
            return (f"the model spent {load:.0%} of the last minute on finals (server.admission_load "
                    f"{s.admission_load:.0%}): new streams are refused")
        stalled = self.health()
        return f"unhealthy: {stalled}" if stalled else None

    async def healthz(self, request):
        return _answer(self.health())

    async def readyz(self, request):
        return _answer(self.readiness())


def _answer(problem: Optional[str]):
    from aiohttp import web

    return web.Response(status=503 if problem else 200, text=(problem or OK_TEXT) + "\n",
                        headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------------- the container's HEALTHCHECK
def ask_server(settings, timeout: float = CHECK_TIMEOUT_S) -> Optional[tuple]:
    """(healthy, one line) from the server's /healthz; None where nothing listens on server.port."""
    import socket
    import ssl
    import urllib.error
    import urllib.request

    s = settings.server
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(s.host, s.host)  # noqa: S104 - the wildcard
    url = f"{'https' if s.tls.cert_file else 'http'}://{f'[{host}]' if ':' in host else host}:{s.port}/healthz"
    context = ssl._create_unverified_context() if s.tls.cert_file else None  # noqa: S323 - its own certificate
    # No proxy: a container's HTTP_PROXY must not carry a request meant for this box.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=timeout) as response:
            return True, f"{url}: {response.read(200).decode('utf-8', 'replace').strip()}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code} {exc.read(200).decode('utf-8', 'replace').strip()}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        return False, f"{url}: {exc.reason}"
    except (socket.timeout, TimeoutError):
        return False, f"{url}: no answer in {timeout:g} s"
    except OSError as exc:
        return False, f"{url}: {exc}"


def main(argv=None) -> int:
    import argparse
    import sys

    from agent import settings as agent_settings
    from agent.errors import EXIT_FAILED, EXIT_OK, AgentError

    parser = argparse.ArgumentParser(prog="python -m agent.server.probes",
                                     description="Is the agent in this container healthy? One line; exit 0 if so, "
                                                 "else 1. Asks GET /healthz on server.port, or, where nothing "
                                                 "listens there, does what `stt-agent health` does.")
    parser.add_argument("--config", help="config file (default: as every command finds it)")
    args = parser.parse_args(argv)
    try:
        answer = ask_server(agent_settings.load(agent_settings.find_config(args.config)[0]))
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if answer is None:  # no server here: the health file, found exactly as `stt-agent health` finds it
        from agent.cli import main as cli

        return cli(["health"] + (["--config", args.config] if args.config else []))
    healthy, why = answer
    print(f"{'healthy' if healthy else 'unhealthy'}: {why}", flush=True)
    return EXIT_OK if healthy else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
