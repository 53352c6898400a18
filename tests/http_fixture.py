"""A small Hugging-Face-like HTTP server for the model fetcher's tests (127.0.0.1, a free port).

It serves ``/<repo>/resolve/<rev>/<path>`` with Range/206 support and
``/api/models/<repo>/revision/<rev>`` with the ``siblings`` shape huggingface_hub parses, and can
inject faults per URL path: drop the connection after N bytes (once), corrupt a byte, answer a
list of status codes before serving normally, or ignore Range requests (answer 200).
Every request is logged with its Range and User-Agent headers and the number of body bytes sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.api: dict[str, object] = {}
        self.log: list[dict] = []
        self.drop_once: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.statuses: dict[str, list[int]] = {}
        self.ignore_range: set[str] = set()
        self.no_length: set[str] = set()  # answered without Content-Length: the body ends when the server closes
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def start(self) -> "FakeHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def add_repo(self, repo: str, rev: str, files: dict[str, bytes], lfs: set[str] = frozenset(), sha=None):
        """Publish files under /<repo>/resolve/<rev>/ and describe them at the model-info API."""
        siblings = []
        for name, data in files.items():
            self.files[f"/{repo}/resolve/{rev}/{name}"] = data
            sib = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name in lfs:
                sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sib)
        self.api[f"/api/models/{repo}/revision/{rev}"] = {"id": repo, "sha": sha or rev, "siblings": siblings}

    def requests_for(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.log if r["path"] == path]

    def record(self, **entry) -> None:
        with self.lock:
            self.log.append(entry)


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):  # noqa: N802 - http.server naming
            path = urlsplit(self.path).path
            rng = self.headers.get("Range")
            self.user_agent = self.headers.get("User-Agent", "")
            with hub.lock:
                queued = hub.statuses.get(path)
                status = queued.pop(0) if queued else None
            if status is not None:
                return self._plain(path, rng, status, b"injected failure\n")
            if path in hub.api:
                body = json.dumps(hub.api[path]).encode()
                return self._send(path, rng, 200, body, {"Content-Type": "application/json"})
            data = hub.files.get(path)
            if data is None:
                return self._plain(path, rng, 404, b"Entry not found\n")
            if path in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            m = re.match(r"^bytes=(\d+)-$", rng or "")
            if m and path not in hub.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    return self._send(path, rng, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                status = 206
            else:
                headers, status = {}, 200
            headers["Accept-Ranges"] = "bytes"
            body = data[start:]
            with hub.lock:
                drop = hub.drop_once.pop(path, None)
            if drop is not None:
                return self._send(path, rng, status, body, headers, cut_after=drop)
            return self._send(path, rng, status, body, headers)

        def _plain(self, path, rng, status, body):
            return self._send(path, rng, status, body, {"Content-Type": "text/plain"})

        def _send(self, path, rng, status, body, headers, cut_after=None):
            payload = body if cut_after is None else body[:cut_after]
            # logged before anything goes out, so the client never sees an answer that is not logged yet
            hub.record(path=path, range=rng, status=status, sent=len(payload), dropped=cut_after is not None,
                       user_agent=self.user_agent)
            self.send_response(status)
            unsized = path in hub.no_length
            if unsized:
                cut_after = len(payload) if cut_after is None else cut_after
            else:
                self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(payload)
                self.wfile.flush()
            except OSError:
                pass
            if cut_after is not None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return Handler
