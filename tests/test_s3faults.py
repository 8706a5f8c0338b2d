"""FlakyS3Proxy: a pass-through proxy to the session's moto server that injects 503 SlowDown.

Pins (1) that the proxy forwards S3 traffic faithfully, (2) which s3fs settings ride out
throttling on writes (put, multipart) and reads (cat, ranges, listings, HEADs), and (3) that
without retries the injected 503 SlowDown reaches the caller.
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.s3faults import (
    READ_METHODS,
    SLOWDOWN_MESSAGE,
    WRITE_METHODS,
    FlakyS3Proxy,
    no_retry_storage_options,
    retrying_storage_options,
)

BUCKET = "pixelmill"  # created by conftest's ``s3`` fixture
MiB = 2**20
PART = 5 * MiB  # S3's (and moto's) smallest multipart part


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FlakyS3Proxy]:
    # A request is failed at most once in a row (its first retry goes through): botocore's first
    # backoff is a jittered 0-1 s, so capping here keeps the throttled tests to a few seconds.
    with FlakyS3Proxy(moto_endpoint, seed=1234, max_consecutive_failures=1) as flaky:
        yield flaky


def _fs(options: dict, *, s3fs_retries: int | None = None):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    if s3fs_retries is not None:
        fs.retries = s3fs_retries  # a class attribute, not a storage option
    return fs


def _payload(size: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def _write_multipart(fs, path: str, data: bytes) -> None:
    """open('wb') with a 5 MiB block: create_multipart_upload, upload_part x3, complete."""
    with fs.open(path, "wb", block_size=PART) as f:
        for start in range(0, len(data), MiB):
            f.write(data[start : start + MiB])


# moto does not check signatures, but treats a request without one as anonymous (403 on reads).
_AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0",
    "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
}


def _raw(proxy: FlakyS3Proxy, method: str, target: str, body=None, headers=None):
    """One plain http.client request through the proxy; a non-bytes body is sent chunked."""
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, target, body=body, headers={**_AUTH, **(headers or {})}, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_pass_through_when_fail_rate_is_zero(s3, proxy: FlakyS3Proxy) -> None:
    # No retries anywhere: a single injected failure would fail this test.
    fs = _fs(no_retry_storage_options(proxy.endpoint_url), s3fs_retries=1)
    big = _payload(11 * MiB, seed=1)

    fs.pipe(f"{BUCKET}/in/small.txt", b"hello")
    _write_multipart(fs, f"{BUCKET}/in/big.bin", big)

    assert fs.ls(f"{BUCKET}/in", detail=False) == [f"{BUCKET}/in/big.bin", f"{BUCKET}/in/small.txt"]
    assert fs.glob(f"{BUCKET}/in/*.bin") == [f"{BUCKET}/in/big.bin"]
    assert fs.info(f"{BUCKET}/in/big.bin")["size"] == len(big)
    assert fs.cat(f"{BUCKET}/in/small.txt") == b"hello"
    assert fs.cat(f"{BUCKET}/in/big.bin") == big
    assert fs.cat_file(f"{BUCKET}/in/big.bin", start=PART - 10, end=PART + 10) == big[PART - 10 : PART + 10]
    assert not fs.exists(f"{BUCKET}/in/missing")
    # The proxy wrote to the very moto the session's ``s3`` fixture sees.
    assert s3.cat(f"{BUCKET}/in/big.bin") == big
    assert proxy.failed == 0 and proxy.forwarded >= 10 and proxy.upstream_errors == 0


def test_writes_survive_slowdown(s3, proxy: FlakyS3Proxy) -> None:
    fs = _fs(retrying_storage_options(proxy.endpoint_url))
    big = _payload(11 * MiB, seed=2)
    proxy.fail_methods = WRITE_METHODS
    proxy.fail_rate = 0.3

    _write_multipart(fs, f"{BUCKET}/out/stream.bin", big)  # sequential: the same draws every run
    failed_multipart = proxy.failed
    fs.pipe(f"{BUCKET}/out/small.txt", b"hello")
    fs.pipe(f"{BUCKET}/out/piped.bin", big, chunksize=PART)  # concurrent upload_part calls
    fs.touch(f"{BUCKET}/out/_SUCCESS")

    assert failed_multipart > 0, "seed 1234 throttles part of the multipart upload"
    assert proxy.failed > failed_multipart
    assert set(proxy.failed_by_method()) <= WRITE_METHODS
    proxy.fail_rate = 0.0
    assert s3.cat(f"{BUCKET}/out/stream.bin") == big
    assert s3.cat(f"{BUCKET}/out/piped.bin") == big
    assert s3.cat(f"{BUCKET}/out/small.txt") == b"hello"
    assert s3.cat(f"{BUCKET}/out/_SUCCESS") == b""
    assert not s3.list_multipart_uploads(BUCKET), "every multipart upload was completed"


def test_reads_survive_slowdown(s3, proxy: FlakyS3Proxy, tmp_path) -> None:
    data = _payload(3 * MiB, seed=3)
    for name in ("a.bin", "b.bin"):
        s3.pipe(f"{BUCKET}/data/{name}", data)
    fs = _fs(retrying_storage_options(proxy.endpoint_url))
    proxy.fail_methods = READ_METHODS
    proxy.fail_rate = 0.3

    assert fs.ls(f"{BUCKET}/data", detail=False) == [f"{BUCKET}/data/a.bin", f"{BUCKET}/data/b.bin"]
    assert fs.glob(f"{BUCKET}/**/*.bin") == [f"{BUCKET}/data/a.bin", f"{BUCKET}/data/b.bin"]
    fs.invalidate_cache()
    assert fs.info(f"{BUCKET}/data/a.bin")["size"] == len(data)  # HEAD: a 503 without a body
    assert fs.exists(f"{BUCKET}/data/b.bin")
    assert fs.cat(f"{BUCKET}/data/a.bin") == data
    assert fs.cat_file(f"{BUCKET}/data/b.bin", start=1000, end=2000) == data[1000:2000]
    with fs.open(f"{BUCKET}/data/b.bin", "rb", block_size=MiB) as f:  # readahead Range GETs
        f.seek(2 * MiB + 5)
        assert f.read(100) == data[2 * MiB + 5 : 2 * MiB + 105]
    fs.get(f"{BUCKET}/data/a.bin", str(tmp_path / "a.bin"))
    assert (tmp_path / "a.bin").read_bytes() == data

    assert proxy.failed > 0
    assert set(proxy.failed_by_method()) <= READ_METHODS


def test_pipeline_storage_options_survive_slowdown(s3, proxy: FlakyS3Proxy) -> None:
    """pixelmill's own filesystem() (with_storage_retries) rides out throttling on its own."""
    from pipelines.storage import filesystem

    fs, path = filesystem(f"s3://{BUCKET}/job/out.txt", {"client_kwargs": {"endpoint_url": proxy.endpoint_url}})
    proxy.fail_rate = 0.3
    for i in range(2):
        fs.pipe(f"{path}.{i}", b"row %d" % i)
    fs.invalidate_cache()
    assert [fs.cat(f"{path}.{i}") for i in range(2)] == [b"row 0", b"row 1"]
    assert len(fs.ls(f"{BUCKET}/job")) == 2
    assert proxy.failed > 0


def test_without_retries_the_slowdown_reaches_the_caller(s3, proxy: FlakyS3Proxy) -> None:
    from botocore.exceptions import ClientError

    s3.pipe(f"{BUCKET}/kept.txt", b"old")
    fs = _fs(no_retry_storage_options(proxy.endpoint_url), s3fs_retries=1)
    proxy.fail_rate = 1.0

    with pytest.raises(OSError) as write_error:
        fs.pipe(f"{BUCKET}/lost.txt", b"new")
    with pytest.raises(OSError) as read_error:
        fs.cat_file(f"{BUCKET}/kept.txt", start=0, end=2)  # a ranged GET, no HEAD first
    with pytest.raises(OSError) as head_error:
        fs.info(f"{BUCKET}/kept.txt")

    # A HEAD answer has no body, so botocore only sees the status: code "503", no "SlowDown" --
    # s3fs' own retry loop (which matches the message text) would not retry it; botocore's does.
    head_cause = head_error.value.__cause__
    assert isinstance(head_cause, ClientError) and head_error.value.errno == errno.EBUSY
    assert head_cause.response["Error"]["Code"] == "503"
    assert head_cause.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    for caught in (write_error.value, read_error.value):
        assert caught.errno == errno.EBUSY  # s3fs maps SlowDown to EBUSY
        assert SLOWDOWN_MESSAGE in str(caught)
        cause = caught.__cause__
        assert isinstance(cause, ClientError)
        assert "SlowDown" in str(cause)
        assert cause.response["Error"]["Code"] == "SlowDown"
        assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.failed == 3 and proxy.forwarded == 0  # one attempt each, none forwarded
    assert not s3.exists(f"{BUCKET}/lost.txt")


def test_cap_seed_and_error_shape(s3, proxy: FlakyS3Proxy, moto_endpoint: str) -> None:
    s3.pipe(f"{BUCKET}/raw.txt", b"0123456789")
    proxy.max_consecutive_failures = 2
    proxy.fail_rate = 1.0

    statuses = [_raw(proxy, "GET", f"/{BUCKET}/raw.txt")[0] for _ in range(3)]
    assert statuses == [503, 503, 200]  # never more than 2 failures in a row for one request
    status, headers, body = _raw(proxy, "GET", f"/{BUCKET}/raw.txt")
    assert status == 503 and headers["content-type"] == "application/xml"
    assert b"<Code>SlowDown</Code>" in body and SLOWDOWN_MESSAGE.encode() in body
    status, _, body = _raw(proxy, "HEAD", f"/{BUCKET}/raw.txt")
    assert status == 503 and body == b""
    # The cap is per request: a different Range is a different request.
    assert _raw(proxy, "GET", f"/{BUCKET}/raw.txt", headers={"Range": "bytes=2-4"})[0] == 503
    assert _raw(proxy, "GET", "/moto-api/data.json")[0] == 200  # moto's own API is never throttled

    def pattern(seed: int) -> list[int]:
        with FlakyS3Proxy(moto_endpoint, seed=seed, fail_rate=0.5, max_consecutive_failures=None) as p:
            return [_raw(p, "HEAD", f"/{BUCKET}/raw.txt")[0] for _ in range(12)]

    first = pattern(7)
    assert first == pattern(7)
    assert {200, 503} == set(first)


def test_forwards_chunked_and_ranged_requests(s3, proxy: FlakyS3Proxy) -> None:
    data = os.urandom(300_000)
    chunks = iter([data[:1], data[1:100_000], data[100_000:]])  # a generator: sent chunked
    status, _, _ = _raw(proxy, "PUT", f"/{BUCKET}/chunked.bin", body=chunks)
    assert status == 200
    assert s3.cat(f"{BUCKET}/chunked.bin") == data

    status, headers, body = _raw(proxy, "GET", f"/{BUCKET}/chunked.bin", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20] and headers["content-range"] == f"bytes 10-19/{len(data)}"
    status, headers, body = _raw(proxy, "HEAD", f"/{BUCKET}/chunked.bin")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(data)
    assert proxy.failed == 0


def test_stop_releases_the_port_and_open_connections(moto_endpoint: str) -> None:
    before = set(threading.enumerate())
    proxy = FlakyS3Proxy(moto_endpoint).start()
    keep_alive = http.client.HTTPConnection(proxy.host, proxy.port, timeout=5)
    keep_alive.request("GET", "/moto-api/data.json")
    assert keep_alive.getresponse().read()  # the connection now idles, kept alive
    proxy.stop()
    assert not proxy.running
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()
    keep_alive.close()
    proxy.stop()  # idempotent
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"
