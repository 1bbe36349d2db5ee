"""What the serving-fault tests share: shoprank on a real uvicorn server in this process, a
bounded loopback load against it, the real backing servers started, killed by pid and
restarted through their scripts, and the figures each test reports.

The load is a few client threads, each sending one request every ``interval`` seconds over
its own keep-alive connection, with a client timeout: a request that hangs shows up as an
answer without a status, never as a hung test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from tests.conftest import REPO

#: Seconds a load client waits for an answer before it gives up on a request.
CLIENT_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Served:
    url: str
    server: uvicorn.Server

    def open_connections(self) -> int:
        """HTTP connections the server holds open now."""
        return len(self.server.server_state.connections)


@contextmanager
def serve(app: FastAPI, timeout: float = 180.0) -> Iterator[Served]:
    """``app`` on a real uvicorn server on a free loopback port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5,
    ))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise AssertionError("uvicorn exited during startup (see the log above)")
        if time.monotonic() > deadline:
            raise AssertionError(f"uvicorn did not start in {timeout:g} s")
        time.sleep(0.1)
    try:
        yield Served(f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass(frozen=True)
class Answer:
    """One request of the load: what was sent when, and what came back how fast."""

    kind: str
    sent: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no HTTP answer (refused, reset or timed out)
    body: Any = None
    error: str | None = None

    @property
    def server_error(self) -> bool:
        return self.status is not None and self.status >= 500

    def detail(self) -> str:
        return str(self.body.get("detail", "")) if isinstance(self.body, dict) else ""


#: One request of a load client: (client, its request number) -> (kind, response).
Send = Callable[[httpx.Client, int], tuple[str, httpx.Response]]


class Load:
    """``clients`` threads, each sending one request every ``interval`` seconds to ``url``.

    A client that falls behind sends at once instead of bursting to catch up, so at most
    ``clients`` requests are in flight. Every answer (or failure) is kept, in order.
    """

    def __init__(self, url: str, send: Send, *, clients: int = 3, interval: float = 0.3) -> None:
        self.url, self.send, self.clients, self.interval = url, send, clients, interval
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}")
                         for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT + 10)
        assert not any(t.is_alive() for t in self._threads), "a load client is stuck"

    def _run(self, client_number: int) -> None:
        number = client_number
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as client:
            due = time.monotonic() + self.interval * client_number / self.clients
            while not self._stop.is_set():
                self._stop.wait(max(0.0, due - time.monotonic()))
                if self._stop.is_set():
                    break
                self._record(self._one(client, number))
                number += self.clients
                due = max(due + self.interval, time.monotonic())

    def _one(self, client: httpx.Client, number: int) -> Answer:
        sent = time.monotonic()
        try:
            kind, response = self.send(client, number)
        except httpx.HTTPError as e:
            return Answer("?", sent, time.monotonic() - sent, None, error=repr(e))
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Answer(kind, sent, time.monotonic() - sent, response.status_code, body)

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def sent_between(self, start: float, end: float = float("inf")) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.sent < end]

    def answered_between(self, start: float, end: float) -> list[Answer]:
        """Requests sent at ``start`` or later and answered before ``end``: all of their work
        fell inside the window (a slow one sent before ``end`` may have finished after it)."""
        return [a for a in self.sent_between(start, end) if a.sent + a.seconds < end]

    def wait_for(
        self, after: float, wanted: Callable[[Answer], bool], timeout: float, what: str
    ) -> Answer:
        """The first answer to a request sent after ``after`` that is ``wanted``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [a for a in self.sent_between(after) if wanted(a)]
            if found:
                return min(found, key=lambda a: a.sent + a.seconds)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:g} s; last answers: "
                                     f"{self.sent_between(after)[-3:]}")
            time.sleep(0.1)

    def run_for(self, seconds: float) -> None:
        time.sleep(seconds)

    def timeline(self, origin: float) -> str:
        """Every answer, one a line: sent (seconds after ``origin``), seconds taken, kind,
        status and the start of its detail."""
        return "\n".join(
            f"{a.sent - origin:8.2f} {a.seconds:6.2f} {a.kind:8} {a.status} "
            f"{(a.detail() or a.error or '')[:100]}"
            for a in self.sent_between(0)
        )


@dataclass(frozen=True)
class FaultReport:
    """The figures one fault test prints (and RELIABILITY.md quotes)."""

    fault: str
    sent: int
    server_errors: int
    no_answer: int
    degraded: int
    during_fault: int
    max_latency_during_fault_s: float
    restart_s: float
    recovery_after_back_s: float

    def line(self) -> str:
        return (f"[fault] {self.fault}: {self.sent} requests, {self.server_errors} answered 5xx, "
                f"{self.no_answer} without an answer, {self.degraded} degraded; "
                f"{self.during_fault} sent during the fault, slowest answered in "
                f"{self.max_latency_during_fault_s:.2f} s; the server took {self.restart_s:.1f} s "
                f"to come back, shoprank served normally {self.recovery_after_back_s:.1f} s later")


# --- the backing servers, through their scripts -------------------------------------------

def script(name: str, command: str, env: dict[str, str], *args: str) -> str:
    """Run ``scripts/<name> <command>``; raise with its output when it fails."""
    result = subprocess.run([str(REPO / "scripts" / name), command, *args], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"scripts/{name} {command} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def kill(pid_file: Path) -> int:
    """SIGKILL the process whose pid ``pid_file`` holds and wait until it is gone."""
    pid = int(pid_file.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive 30 s after SIGKILL"
        time.sleep(0.05)
    return pid


def pause(pid_file: Path) -> int:
    """SIGSTOP the process whose pid ``pid_file`` holds: it keeps its sockets, answers none."""
    pid = int(pid_file.read_text().strip())
    os.kill(pid, signal.SIGSTOP)
    return pid


def resume(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def sockets_to(port: int, state: str) -> int:
    """Loopback TCP sockets of this machine connected to ``port`` in ``state`` (a
    /proc/net/tcp state: "01" established, "08" close-wait)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            count += remote_port == port and fields[3] == state
    return count
