"""A real Cloud Storage emulator for the tests: ``gcp-storage-emulator`` (requirements.lock) in a
subprocess on a free port of 127.0.0.1, in memory, reached by the production client
(google-cloud-storage, `lsnet_tf.utils.gcs`) through ``STORAGE_EMULATOR_HOST``.

Fixtures (import them into a test module: ``from gcs_emulator import gcs_emulator, bucket``):

- ``gcs_emulator`` (session): starts the emulator once per test process, sets
  ``STORAGE_EMULATOR_HOST`` (subprocesses started by the tests, Beam's workers included,
  inherit it), yields its address, and stops it and restores the variable at the end;
- ``bucket``: a new empty bucket for one test, as ``gs://NAME``.
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
