"""Pytest plugin: a real S3 endpoint for the tests, moto's server on a free loopback port (one per
session), fresh buckets per test, and a stand-in endpoint that answers every request with one error."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lifecycle.stores.s3 import S3Options

REGION = "eu-west-3"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def plain_client(endpoint: str, config=None, region: str = REGION):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config, **CREDENTIALS)


@pytest.fixture
def s3(moto_endpoint):
    """A plain boto3 client on the moto server, to set buckets up and look at what the archive wrote."""
    return plain_client(moto_endpoint)


def s3_options(endpoint: str, **options) -> S3Options:
    """Archive options whose client is a plain boto3 one on `endpoint`, as the core receives it."""
    return S3Options(client_factory=lambda config: plain_client(endpoint, config), max_attempts=2, **options)


def new_bucket(s3, *, region: str | None = REGION, object_lock: bool = True) -> str:
    name = f"evidence-{secrets.token_hex(6)}"
    arguments = {"Bucket": name, "ObjectLockEnabledForBucket": object_lock}
    if region and region != "us-east-1":
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**arguments)
    return name


@pytest.fixture
def locked_bucket(s3) -> str:
    """A bucket in eu-west-3 with Object Lock (and so versioning) enabled."""
    return new_bucket(s3)


@dataclass
class FailingEndpoint:
    """An S3 endpoint that answers every request with one HTTP status and S3 error code."""

    status: int = 503
    code: str = "SlowDown"
    requests: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def failing_endpoint() -> Iterator[FailingEndpoint]:
    endpoint = FailingEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            endpoint.requests.append(f"{self.command} {self.path}")
            body = f"<Error><Code>{endpoint.code}</Code><Message>refused</Message></Error>".encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _fail

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    server.shutdown()
    thread.join()
