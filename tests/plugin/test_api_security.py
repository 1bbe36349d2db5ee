"""The HTTP API's guards: the admin key leaves no trace in logs, CORS is closed unless origins
are set, oversized bodies get 413 before they are read, the docs pages need no CDN."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from plugin.api import create_app
from plugin.api.body_limit import BodyLimitMiddleware
from plugin.settings import Settings

RIGHT_KEY = "right-key-7c1f9e02d4"
WRONG_KEY = "wrong-key-b83a56e1f0"
SHOP = "https://shop.example"


# -- the admin key ---------------------------------------------------------------------------

@pytest.fixture
def served() -> Iterator[str]:
    """The app under a real uvicorn (access log on, at debug level) on a free loopback port."""
    app = create_app(Settings(index="empty", admin_api_key=RIGHT_KEY))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, log_level="debug", access_log=True)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_neither_a_wrong_nor_the_right_admin_key_is_logged(
    served: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    with httpx.Client(base_url=served) as http:
        for key in (WRONG_KEY, RIGHT_KEY):
            headers = {"X-API-Key": key}
            answers += [
                http.get("/sessions/s1", headers=headers),
                http.delete("/products/p1", headers=headers),
            ]
    assert [r.status_code for r in answers[:2]] == [401, 401]
    assert answers[2].status_code == 404  # the right key: no such session
    assert answers[3].status_code == 503  # the right key: no index to delete from (logged)
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert sum("/sessions/s1" in line for line in access) == 2, "the access log was not captured"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for key in (WRONG_KEY, RIGHT_KEY):
        assert key not in logged
        assert all(key not in r.text for r in answers)


def test_settings_never_show_the_key() -> None:
    settings = Settings(admin_api_key=RIGHT_KEY)
    for shown in (repr(settings), str(settings), settings.model_dump_json(),
                  str(settings.model_dump())):
        assert RIGHT_KEY not in shown


# -- CORS ------------------------------------------------------------------------------------

def preflight(client: TestClient, origin: str, headers: str = "content-type") -> httpx.Response:
    return client.options("/search", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    })


def cors_headers(response: httpx.Response) -> set[str]:
    return {name for name in response.headers if name.startswith("access-control-")}


def test_cors_is_closed_by_default() -> None:
    assert Settings().cors_allow_origins == []
    with TestClient(create_app(Settings(index="empty"))) as client:
        assert not cors_headers(client.get("/healthz", headers={"Origin": SHOP}))
        assert not cors_headers(client.post("/search", json={"query": "x"},
                                            headers={"Origin": SHOP}))
        answer = preflight(client, SHOP)
        assert answer.status_code == 405 and not cors_headers(answer)


def test_cors_allows_exactly_the_configured_origins() -> None:
    settings = Settings(index="empty", cors_allow_origins=[SHOP, "http://localhost:3000"])
    with TestClient(create_app(settings)) as client:
        allowed = client.get("/healthz", headers={"Origin": SHOP})
        assert allowed.headers["access-control-allow-origin"] == SHOP
        answer = preflight(client, SHOP)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == SHOP
        assert "POST" in answer.headers["access-control-allow-methods"]
        for origin in ("https://evil.example", "https://shop.example.evil.example",
                       "http://shop.example"):
            refused = client.get("/healthz", headers={"Origin": origin})
            assert "access-control-allow-origin" not in refused.headers
            assert preflight(client, origin).status_code == 400
        # The admin header is not for web pages.
        assert preflight(client, SHOP, headers="x-api-key").status_code == 400


@pytest.mark.parametrize(("value", "origins"), [
    ("https://a.example, https://b.example:8443/", ["https://a.example", "https://b.example:8443"]),
    ('["https://a.example"]', ["https://a.example"]),
    ("", []),
])
def test_origins_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, origins: list[str]
) -> None:
    monkeypatch.setenv("SHOPRANK_CORS_ALLOW_ORIGINS", value)
    assert Settings().cors_allow_origins == origins


@pytest.mark.parametrize("origin", ["*", "shop.example", "https://shop.example/app", "ftp://x.y"])
def test_what_is_not_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError, match="SHOPRANK_CORS_ALLOW_ORIGINS"):
        Settings(cors_allow_origins=[origin])


# -- the body limit --------------------------------------------------------------------------

LIMIT = 1024


@pytest.fixture
def small_bodies() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(index="empty", max_body_bytes=LIMIT))) as client:
        yield client


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert f"the limit is {LIMIT} bytes" in response.json()["detail"]


def test_a_declared_length_over_the_limit_is_413(small_bodies: TestClient) -> None:
    body = b'{"query": "' + b"x" * LIMIT + b'"}'
    for path in ("/search", "/events"):
        assert_too_large(small_bodies.post(path, content=body,
                                           headers={"Content-Type": "application/json"}))
    assert small_bodies.post("/search", json={"query": "x" * 600}).status_code == 422


def test_a_chunked_body_over_the_limit_is_413(small_bodies: TestClient) -> None:
    def chunks(count: int) -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(count):
            yield b"x" * 100
        yield b'"}'

    answer = small_bodies.post("/search", content=chunks(20),
                               headers={"Content-Type": "application/json"})
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert_too_large(answer)
    # Within the limit the body reaches the handler whole: a query too long for the model.
    within = small_bodies.post("/search", content=chunks(6),
                               headers={"Content-Type": "application/json"})
    assert within.status_code == 422 and within.json()["detail"][0]["loc"] == ["body", "query"]


def run_guarded(headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[list[Message], int]:
    """Run `BodyLimitMiddleware` alone on a request of ``chunks`` 300-byte chunks; return what
    it sent and how many chunks it read."""
    read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * 300, "more_body": read < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": "/events", "headers": headers,
        "app": SimpleNamespace(state=SimpleNamespace(settings=Settings(max_body_bytes=LIMIT))),
    }
    asyncio.run(BodyLimitMiddleware(app)(scope, receive, send))
    return sent, read


def test_an_oversized_body_is_refused_before_it_is_read() -> None:
    sent, read = run_guarded([(b"content-length", b"3000000")], chunks=10_000)
    assert sent[0]["status"] == 413 and read == 0
    sent, read = run_guarded([(b"transfer-encoding", b"chunked")], chunks=10_000)
    assert sent[0]["status"] == 413 and read == 4  # 1,200 bytes: past 1,024, no further
    sent, read = run_guarded([(b"transfer-encoding", b"chunked")], chunks=3)
    assert sent[0]["status"] == 204 and read == 3


def test_the_default_limit_holds_a_full_events_batch() -> None:
    assert Settings().max_body_bytes == 2 * 1024 * 1024


# -- the docs pages --------------------------------------------------------------------------

@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_outside(page: str) -> None:
    with TestClient(create_app(Settings(index="empty"))) as client:
        html = client.get(page)
        assert html.status_code == 200
        assert not re.findall(r"https?://", html.text), "the page names an outside URL"
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert len(assets) >= 2
        for url in [*assets, "/openapi.json"]:
            assert url.startswith("/"), url
            answer = client.get(url)
            assert answer.status_code == 200 and answer.content, url
        assert client.get("/docs/oauth2-redirect").status_code == 200
