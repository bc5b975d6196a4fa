"""OpenAI-compatible servers as subprocesses for tests and benchmarks: pvq's (python -m pvq.server) and the
peer's (python -m llama_cpp.server), on a free port of 127.0.0.1, stopped on exit."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(module: str, model, *args: str, port: int | None = None, start_timeout: float = 120.0):
    """Runs `python -m module --model model --port P *args` until /health (pvq) or /v1/models (the peer)
    answers; yields (base URL, Popen). The log goes to a file that is printed when start-up fails."""
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "bindings"), os.environ.get("PYTHONPATH", "")]))
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", module, "--model", str(model), "--port", str(port), *args],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    probe = "/health" if module == "pvq.server" else "/v1/models"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{module} did not start (exit {proc.returncode}):\n{log.read()[-3000:]}")
            try:
                if request(base, "GET", probe, timeout=2)[0] in (200, 401):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def listen_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on port (from /proc/net/tcp, state 0A = LISTEN)."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def _connection(base: str, timeout: float) -> http.client.HTTPConnection:
    url = urlsplit(base)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def request(base: str, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 300):
    """One request on a connection of its own; body is bytes or a JSON value. Returns (status, headers with
    lower-case names, body bytes)."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    conn = _connection(base, timeout)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(base: str, path: str, headers: dict | None = None):
    status, _, body = request(base, "GET", path, headers=headers)
    return json.loads(body)


@contextmanager
def events(base: str, path: str, body: dict, timeout: float = 300):
    """A streamed POST: yields (status, an iterator of the server-sent events' data strings); leaving the
    with-block closes the connection, as a client that goes away does."""
    conn = _connection(base, timeout)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={"content-type": "application/json"})
        r = conn.getresponse()

        def data():
            while line := r.readline():
                if line.startswith(b"data: "):
                    yield line[len(b"data: "):].strip().decode()
        yield r.status, data()
    finally:
        conn.close()
