"""TLS and authentication settings reach the wire: a real TLS endpoint with basic auth and
client certificates in front of the suite's OpenSearch node.

The embedded node has no security plugin, so the endpoint is a small TLS-terminating proxy
(Python's ssl module, certificates made by the openssl command) that checks the password and
forwards to the node. This proves what the client sends and verifies, not how the OpenSearch
security plugin behaves.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from indexer.errors import StoreError, StoreUnavailableError
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from indexer.settings import IndexerSettings
from tests.indexer.store_factories import OPENSEARCH_URL

pytestmark = pytest.mark.integration

USER, PASSWORD = "shop", "s3cret pass"


@dataclass
class Certificates:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


@dataclass
class Endpoint:
    url: str
    certs: Certificates


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, subject: str, extensions: str) -> None:
    """A key and a certificate for ``name``, signed by the CA in ``folder``."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=folder)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=shoprank test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _issue(folder, "server", "/CN=127.0.0.1",
           "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _issue(folder, "client", "/CN=shoprank", "extendedKeyUsage=clientAuth\n")
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                        folder / "client.pem", folder / "client.key")


class _AuthProxy(BaseHTTPRequestHandler):
    """Checks basic auth, then forwards the request to the node and its answer back."""

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    backend = urlsplit(OPENSEARCH_URL)

    def _forward(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            body = b'{"error":"unauthorized","status":401}'
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
        else:
            length = int(self.headers.get("Content-Length") or 0)
            upstream = http.client.HTTPConnection(self.backend.hostname or "127.0.0.1",
                                                  self.backend.port or 9200, timeout=60)
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            upstream.request(self.command, self.path, self.rfile.read(length), headers)
            answer = upstream.getresponse()
            body = answer.read()
            upstream.close()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass  # the suite's output stays quiet


def _serve(certs: Certificates, *, client_certs: bool) -> Iterator[Endpoint]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server, certs.server_key)
    if client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certs.ca)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthProxy)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(f"https://127.0.0.1:{server.server_address[1]}", certs)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def endpoint(certificates: Certificates) -> Iterator[Endpoint]:
    yield from _serve(certificates, client_certs=False)


@pytest.fixture(scope="module")
def mutual_endpoint(certificates: Certificates) -> Iterator[Endpoint]:
    yield from _serve(certificates, client_certs=True)


def _settings(url: str, **overrides: object) -> IndexerSettings:
    return IndexerSettings.model_validate(
        {"store": "opensearch", "opensearch_url": url, "opensearch_timeout_s": 30,
         "opensearch_alias_prefix": "shoprank-test", **overrides}
    )


def _round_trip(settings: IndexerSettings) -> int:
    """Build a tiny index through the endpoint, count it, drop it."""
    store = OpenSearchStore(settings, "tls", dimension=4)
    products = [Product.model_validate({"id": f"t{i}", "title": f"tls product {i}"})
                for i in range(3)]
    try:
        store.replace_all(products, np.eye(3, 4, dtype=np.float32))
        return store.count()
    finally:
        store.drop()
        store.close()


def test_basic_auth_over_tls_verified_with_the_given_ca(endpoint: Endpoint) -> None:
    settings = _settings(endpoint.url, opensearch_username=USER, opensearch_password=PASSWORD,
                         opensearch_ca_certs=endpoint.certs.ca)
    assert _round_trip(settings) == 3


def test_a_wrong_password_is_a_clear_refusal(endpoint: Endpoint) -> None:
    wrong = "not-the-password-42"
    settings = _settings(endpoint.url, opensearch_username=USER, opensearch_password=wrong,
                         opensearch_ca_certs=endpoint.certs.ca)
    with pytest.raises(StoreError, match=r"refused to look up the alias.*401") as caught:
        OpenSearchStore(settings, "tls").exists()
    assert wrong not in str(caught.value)


def test_an_untrusted_certificate_is_refused_unless_verification_is_off(
    endpoint: Endpoint,
) -> None:
    untrusted = _settings(endpoint.url, opensearch_username=USER, opensearch_password=PASSWORD)
    with pytest.raises(StoreUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        OpenSearchStore(untrusted, "tls").exists()
    unverified = _settings(endpoint.url, opensearch_username=USER, opensearch_password=PASSWORD,
                           opensearch_verify_certs=False)
    with pytest.warns(Warning):
        assert OpenSearchStore(unverified, "tls-absent").exists() is False


def test_a_client_certificate_is_sent_when_configured(mutual_endpoint: Endpoint) -> None:
    certs = mutual_endpoint.certs
    common = {"opensearch_username": USER, "opensearch_password": PASSWORD,
              "opensearch_ca_certs": certs.ca}
    with pytest.raises(StoreUnavailableError):
        OpenSearchStore(_settings(mutual_endpoint.url, **common), "tls").exists()
    settings = _settings(mutual_endpoint.url, opensearch_client_cert=certs.client,
                         opensearch_client_key=certs.client_key, **common)
    assert _round_trip(settings) == 3
