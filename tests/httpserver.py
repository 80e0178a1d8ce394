"""A real HTTP server for tests: serves a directory on 127.0.0.1, optionally misbehaving.

``serve(directory)`` runs ``http.server`` in a thread on an ephemeral port and yields a
:class:`RepoServer` whose ``url`` points at the directory. It honours ``Range:``
(206 + Content-Range) like a good static server. ``server.fault`` makes it misbehave
for matching paths, a limited number of times:

* ``truncate`` -- announce the full length, send ``at`` bytes, close the connection;
* ``stall``    -- send ``at`` bytes, then go silent for ``seconds`` (longer than the
  client's timeout);
* ``corrupt``  -- flip the byte at offset ``at`` of the file;
* ``ignore_range`` -- answer every request with 200 and the whole file;
* ``extra``    -- send ``extra`` bytes more than the file holds (announced in
  Content-Length, so a careful client sees it before reading);
* ``extra_unannounced`` -- no Content-Length, close-delimited body with extra bytes;
* ``trickle``  -- send ``at`` bytes, then ``rate`` bytes per second (each within any
  socket timeout) until the client gives up;
* ``trickle_headers`` -- send the status line and headers at ``rate`` bytes per second;
* ``status``   -- answer with HTTP ``code`` (e.g. 500, 404);
* ``truncate_ignore_range`` -- truncate the first (plain) request at ``at``, then
  answer every Range request with 200 and the whole file.

Every request is logged (path, Range header, status) in ``server.log``. No mocks: this
is a real socket server the agent talks to with urllib.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Fault:
    """How the server misbehaves, for paths ending with ``suffix``, ``times`` times (-1: always)."""

    kind: str
    suffix: str = ".bsipatch"
    times: int = 1
    at: int = 0
    seconds: float = 5.0
    extra: int = 1000
    code: int = 500
    rate: float = 2.0

    def matches(self, path: str) -> bool:
        return self.times != 0 and path.endswith(self.suffix)


@dataclass
class LogEntry:
    path: str
    range: str | None
    status: int
    fault: str | None


@dataclass
class RepoServer:
    """Handle on a running server."""

    url: str
    directory: Path
    fault: Fault | None = None
    log: list[LogEntry] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            f = self.fault
            if f is None or not f.matches(path):
                return None
            if f.times > 0:
                f.times -= 1
            return f

    def requests_for(self, suffix: str) -> list[LogEntry]:
        return [e for e in self.log if e.path.endswith(suffix)]


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(state: RepoServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            rng = self.headers.get("Range")
            fault = state.take_fault(path)
            kind = fault.kind if fault else None
            if kind == "truncate_ignore_range":
                kind = "ignore_range" if rng else "truncate"
            rel = path.lstrip("/")
            target = (state.directory / rel).resolve()
            if ".." in rel.split("/") or not target.is_file():
                state.log.append(LogEntry(path, rng, 404, kind))
                self._send(404, {"Content-Length": "0", "Connection": "close"})
                self.close_connection = True
                return
            if kind == "status":
                assert fault is not None
                state.log.append(LogEntry(path, rng, fault.code, kind))
                self._send(fault.code, {"Content-Length": "0", "Connection": "close"})
                self.close_connection = True
                return
            data = target.read_bytes()
            if kind == "corrupt":
                assert fault is not None
                b = bytearray(data)
                b[fault.at] ^= 0x5A
                data = bytes(b)
            if kind in ("extra", "extra_unannounced"):
                assert fault is not None
                data = data + b"\xa5" * fault.extra
            start, status = 0, 200
            m = _RANGE.match(rng or "")
            if m and kind != "ignore_range":
                start = int(m.group(1))
                if start >= len(data):
                    state.log.append(LogEntry(path, rng, 416, kind))
                    self._send(
                        416,
                        {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"},
                    )
                    return
                status = 206
            body = data[start:]
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if kind != "extra_unannounced":
                headers["Content-Length"] = str(len(body))
            else:
                headers["Connection"] = "close"
                self.close_connection = True
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            state.log.append(LogEntry(path, rng, status, kind))
            if kind == "truncate":
                assert fault is not None
                self._send(status, headers, body[: fault.at])
                self.wfile.flush()
                self.close_connection = True
                return
            if kind in ("trickle", "trickle_headers"):
                assert fault is not None
                _trickle(self, state, fault, status, headers, body)
                return
            if kind == "stall":
                assert fault is not None
                self._send(status, headers, body[: fault.at])
                self.wfile.flush()
                deadline = time.monotonic() + fault.seconds
                while time.monotonic() < deadline and not state.stopping.is_set():
                    time.sleep(0.02)
                self.close_connection = True
                return
            self._send(status, headers, body)

    return Handler


def _trickle(
    handler: http.server.BaseHTTPRequestHandler,
    state: RepoServer,
    fault: Fault,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Send slowly: the headers (``trickle_headers``) or the body after ``fault.at`` bytes."""
    head = f"HTTP/1.1 {status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = head.encode() + b"\r\n"
    fast = 0 if fault.kind == "trickle_headers" else len(raw) + fault.at
    handler.close_connection = True
    try:
        handler.wfile.write(raw[:fast] if fast <= len(raw) else raw + body[: fault.at])
        handler.wfile.flush()
        rest = (raw + body)[fast:]
        step = max(1, int(fault.rate * 0.25))
        for i in range(0, len(rest), step):
            if state.stopping.is_set():
                return
            time.sleep(step / fault.rate)
            handler.wfile.write(rest[i : i + step])
            handler.wfile.flush()
    except OSError:
        return  # the client gave up


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up mid-response on purpose in these tests


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bsipatch test repository")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def serve(directory: str | Path, *, tls: tuple[Path, Path] | None = None) -> Iterator[RepoServer]:
    """Serve ``directory`` on ``http://127.0.0.1:<ephemeral>/`` until the block ends.

    With ``tls=(cert.pem, key.pem)`` it serves ``https://`` instead.
    """
    state = RepoServer(url="", directory=Path(directory).resolve())
    httpd = _Server(("127.0.0.1", 0), _make_handler(state))
    scheme = "http"
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
