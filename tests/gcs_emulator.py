"""A real Cloud Storage emulator for the tests: ``gcp-storage-emulator`` (requirements.lock) in a
subprocess on a free port of 127.0.0.1, in memory, reached by the production client
(google-cloud-storage, `lsnet_tf.utils.gcs`) through ``STORAGE_EMULATOR_HOST``.

Fixtures (import them into a test module: ``from gcs_emulator import gcs_emulator, bucket``):

- ``gcs_emulator`` (session): starts the emulator once per test process, sets
  ``STORAGE_EMULATOR_HOST`` (subprocesses started by the tests, Beam's workers included,
  inherit it), yields its address, and stops it and restores the variable at the end;
- ``bucket``: a new empty bucket for one test, as ``gs://NAME``.

``read_only_proxy(address)`` starts a proxy in front of the emulator that forwards reads and
answers every write with the service's 403: the client pointed at it sees a bucket it may read
and not write (the emulator itself has no permissions to refuse with).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

ENV = "STORAGE_EMULATOR_HOST"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(address + "/", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def gcs_emulator():
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _answers(address):
        if proc.poll() is not None:
            pytest.fail("gcp-storage-emulator exited at start: "
                        + proc.stderr.read().decode(errors="replace")[-2000:])
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gcp-storage-emulator did not answer on {address} within 60 s")
        time.sleep(0.1)
    old = os.environ.get(ENV)
    os.environ[ENV] = address
    try:
        yield address
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bucket(gcs_emulator):
    from lsnet_tf.utils import gcs

    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs.client().create_bucket(name)
    return f"gs://{name}"


_WRITES = ("POST", "PUT", "PATCH", "DELETE")


def read_only_proxy(upstream: str):
    """An HTTP server in front of the emulator that forwards reads (GET, HEAD) and refuses every
    write with the service's own 403 answer (a JSON error body, as Cloud Storage sends to a
    caller with read-only permission): a bucket the tests may read and not write."""
    import http.client
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    host = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _refuse(self):
            self._body()
            body = json.dumps({"error": {
                "code": 403, "message": "reader@tests does not have storage.objects.create "
                                        "access to the Google Cloud Storage object.",
                "errors": [{"reason": "forbidden", "domain": "global"}]}}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self):
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=self._body() or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
            finally:
                conn.close()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self):
            self._forward()

        do_HEAD = do_GET

        def do_POST(self):
            self._refuse()

        do_PUT = do_PATCH = do_DELETE = do_POST

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

