"""A flaky-S3 test fixture: a threaded HTTP reverse proxy that throttles like real S3.

Real S3 answers a share of requests with ``503 SlowDown`` when a prefix is hot; a pipeline
that only ever talked to moto never sees that. :class:`FlakyS3Proxy` sits on 127.0.0.1 (a
random free port) in front of the tests' moto server and forwards every request verbatim
(method, path, query, headers, body -- Content-Length or chunked -- HEAD, Range GETs,
multipart uploads) and moto's response back, except that while ``fail_rate > 0`` it answers
a seeded share of requests itself with HTTP 503 and the S3 ``SlowDown`` XML error body,
without forwarding them.

Throttling is transient: ``max_consecutive_failures`` caps how often the *same* request
(method + path + query + Range) is failed in a row, so a client retrying more times than
that always gets through. Keep it below the client's retry budget (botocore counts total
attempts: ``total_max_attempts=N`` survives a cap of ``N - 1``).

This is a test fixture, so it uses only the standard library
(``http.server.ThreadingHTTPServer`` + ``http.client``). Whoever starts a proxy stops it;
use it as a context manager::

    with FlakyS3Proxy(moto_endpoint, fail_rate=0.3, seed=7) as proxy:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **retrying_storage_options(proxy.endpoint_url))
        ...
        assert proxy.failed > 0

s3fs survives the 503s with :func:`retrying_storage_options` (botocore ``standard`` retry
mode with enough attempts; s3fs' own ``_error_wrapper`` additionally retries ``ClientError``
messages naming ``SlowDown``). See tests/test_s3faults.py for the behaviour pinned by tests.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FlakyS3Proxy",
    "SLOWDOWN_MESSAGE",
    "WRITE_METHODS",
    "READ_METHODS",
    "no_retry_storage_options",
    "retrying_storage_options",
]

SLOWDOWN_MESSAGE = "Please reduce your request rate."
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})

# Hop-by-hop headers (RFC 9110 7.6.1) are per connection: never forwarded either way.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_COPY_CHUNK = 1 << 16


def retrying_storage_options(endpoint_url: str, total_max_attempts: int = 10) -> dict[str, Any]:
    """s3fs storage_options that ride out transient 503 SlowDown on every S3 call.

    ``config_kwargs`` goes to ``botocore.config.Config``: ``mode="standard"`` retries any 500/502/
    503/504 and the ``SlowDown`` throttling code -- on every operation, HEAD included (a HEAD 503
    has no body, so only the status says "retry") -- with jittered exponential backoff, up to
    ``total_max_attempts`` attempts in all. Retries rewind the request body, so put_object,
    upload_part and complete_multipart_upload are all covered.
    """
    return {
        "client_kwargs": {"endpoint_url": endpoint_url},
        "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": total_max_attempts}},
    }


def no_retry_storage_options(endpoint_url: str) -> dict[str, Any]:
    """botocore retries switched off (one attempt per call).

    s3fs' own retry loop is a class attribute, not a storage option: also set
    ``fs.retries = 1`` on the instance to switch that off.
    """
    return {
        "client_kwargs": {"endpoint_url": endpoint_url},
        "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}},
    }


def _slowdown_body(resource: str, request_id: str) -> bytes:
    resource = resource.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error><Code>SlowDown</Code>"
        f"<Message>{SLOWDOWN_MESSAGE}</Message>"
        f"<Resource>{resource}</Resource>"
        f"<RequestId>{request_id}</RequestId>"
        f"<HostId>flaky-s3-proxy/{request_id}</HostId>"
        "</Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError, OSError):
            # Client went away mid-request (or the proxy is stopping): drop the connection.
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # discard trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after the chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        # Always drain the request body first, so the connection stays usable after a 503.
        body = self._read_body()
        if proxy._should_fail(self.command, self.path, self.headers.get("Range")):
            self._send_slowdown()
        else:
            self._forward(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _send_slowdown(self) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        body = _slowdown_body(urllib.parse.urlsplit(self.path).path, request_id)
        self.send_response_only(503, "Slow Down")
        self.send_header("Date", formatdate(usegmt=True))
        self.send_header("Server", "AmazonS3")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("x-amz-id-2", f"flaky-s3-proxy/{request_id}")
        self.send_header("Content-Type", "application/xml")
        if self.command == "HEAD":  # a HEAD answer carries no body, just like real S3's
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        upstream = http.client.HTTPConnection(proxy._up_host, proxy._up_port, timeout=proxy.timeout)
        try:
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    lname = name.lower()
                    # The body is re-framed below; Expect would make the upstream wait for a 100.
                    if lname in _HOP_BY_HOP or lname in ("content-length", "expect"):
                        continue
                    upstream.putheader(name, value)
                if body or self.command in ("PUT", "POST", "PATCH"):
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body or None)
                response = upstream.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                proxy._count("upstream_errors")
                self._send_plain(502, f"flaky-s3-proxy: upstream failed: {exc!r}")
                return
            proxy._count("forwarded")
            self.send_response_only(response.status, response.reason)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                    continue
                self.send_header(name, value)
            no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
            if no_body:
                if length is not None:  # HEAD keeps the object's size: s3fs.info() reads it
                    self.send_header("Content-Length", length)
                self.end_headers()
                return
            if length is None:  # upstream streamed without a length: buffer, then frame it
                data = response.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Length", length)
            self.end_headers()
            remaining = int(length)
            while remaining > 0:
                chunk = response.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    self.close_connection = True  # short upstream body: the client sees it cut
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        finally:
            upstream.close()

    def _send_plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FlakyS3Proxy


class FlakyS3Proxy:
    """Reverse proxy in front of an S3 endpoint that injects ``503 SlowDown`` answers.

    Parameters
    ----------
    upstream:
        ``http://host:port`` of the real (moto) S3 endpoint.
    fail_rate:
        Share of eligible requests answered with 503 SlowDown, 0.0 (pass-through) to 1.0.
        Settable at runtime (``proxy.fail_rate = 0.3``) or for a block (``with proxy.faults(0.3)``).
    seed:
        Seeds the ``random.Random`` that draws failures: one client issuing requests one after
        another sees the same failures every run.
    fail_methods:
        Only requests with these HTTP methods may fail (e.g. :data:`WRITE_METHODS` or
        :data:`READ_METHODS`); ``None`` = every method. ``/moto-api/`` calls never fail.
    max_consecutive_failures:
        The same request (method, path + query, Range header) is failed at most this many times
        in a row; the next one is forwarded. ``None`` = no cap (a retrying client may give up).
    """

    def __init__(
        self,
        upstream: str,
        *,
        fail_rate: float = 0.0,
        seed: int | None = 0,
        fail_methods: Iterable[str] | None = None,
        max_consecutive_failures: int | None = 2,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 30.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream
        self._up_host = parsed.hostname
        self._up_port = parsed.port or 80
        self.host = host
        self.port = port
        self.timeout = timeout
        self.fail_methods = fail_methods
        self.max_consecutive_failures = max_consecutive_failures
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._fail_rate = 0.0
        self.fail_rate = fail_rate
        self._streak: dict[tuple[str, str, str | None], int] = {}
        self._counts = {"failed": 0, "forwarded": 0, "upstream_errors": 0}
        self._failed_by_method: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FlakyS3Proxy:
        if self._server is not None:
            raise RuntimeError("FlakyS3Proxy already started")
        server = _Server((self.host, self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"flaky-s3-proxy:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        # Idle keep-alive connections would keep their handler threads blocked on a read.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FlakyS3Proxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FlakyS3Proxy not started")
        return f"http://{self.host}:{self.port}"

    # -- fault control -------------------------------------------------------------------------

    @property
    def fail_rate(self) -> float:
        return self._fail_rate

    @fail_rate.setter
    def fail_rate(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], got {value}")
        self._fail_rate = value

    @property
    def fail_methods(self) -> frozenset[str] | None:
        """HTTP methods that may be failed (upper case); ``None`` = all. Settable at runtime."""
        return self._fail_methods

    @fail_methods.setter
    def fail_methods(self, methods: Iterable[str] | None) -> None:
        self._fail_methods = None if methods is None else frozenset(m.upper() for m in methods)

    @contextlib.contextmanager
    def faults(self, fail_rate: float) -> Iterator[FlakyS3Proxy]:
        """Inject failures at ``fail_rate`` for the block, then restore the previous rate."""
        previous = self.fail_rate
        self.fail_rate = fail_rate
        try:
            yield self
        finally:
            self.fail_rate = previous

    # -- counters ------------------------------------------------------------------------------

    @property
    def failed(self) -> int:
        """Requests answered with 503 SlowDown (never forwarded)."""
        with self._lock:
            return self._counts["failed"]

    @property
    def forwarded(self) -> int:
        """Requests forwarded to the upstream (whatever it answered)."""
        with self._lock:
            return self._counts["forwarded"]

    @property
    def upstream_errors(self) -> int:
        """Requests the upstream could not answer (the client got a 502)."""
        with self._lock:
            return self._counts["upstream_errors"]

    def failed_by_method(self) -> dict[str, int]:
        with self._lock:
            return dict(self._failed_by_method)

    def reset_counters(self) -> None:
        with self._lock:
            for key in self._counts:
                self._counts[key] = 0
            self._failed_by_method.clear()
            self._streak.clear()

    # -- internals (called from handler threads) -----------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _should_fail(self, method: str, target: str, range_header: str | None) -> bool:
        if target.startswith("/moto-api"):
            return False
        if self.fail_methods is not None and method.upper() not in self.fail_methods:
            return False
        rate = self._fail_rate
        if rate <= 0.0:
            return False
        key = (method.upper(), target, range_header)
        with self._lock:
            streak = self._streak.get(key, 0)
            cap = self.max_consecutive_failures
            # Draw even when capped, so the sequence of draws only depends on the request order.
            draw = self._rng.random() < rate
            if draw and (cap is None or streak < cap):
                self._streak[key] = streak + 1
                self._counts["failed"] += 1
                self._failed_by_method[method.upper()] = self._failed_by_method.get(method.upper(), 0) + 1
                return True
            self._streak.pop(key, None)
            return False
