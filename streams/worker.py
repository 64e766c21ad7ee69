"""Running the worker: in this process (``governor worker``) or as a child process."""

from __future__ import annotations

import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streams.settings import Settings
from streams.workers import web_url

SWITCH_INTERVAL_S = 0.02
GC_GEN0_THRESHOLD = 100_000


def resolve_web_port(settings: Settings) -> Settings:
    """The settings with a concrete web port: ``web_port`` 0 means any free port on
    ``web_host``, chosen here once, before the app is built, so the web server, the client id
    the group sees and the printed address are the same. The port is free again between this
    and the web server's bind: a process taking it in that moment makes the start fail with
    the bind error, it cannot make two workers share a port."""
    if settings.web_port != 0:
        return settings
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.web_host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.bind(address)
            port: int = sock.getsockname()[1]
    except OSError as exc:
        raise RuntimeError(
            f"GOVERNOR_WEB_PORT=0: no free port on GOVERNOR_WEB_HOST={settings.web_host}: {exc}"
        ) from exc
    return settings.replace(web_port=port)


def write_port_file(path: Path, port: int) -> None:
    """The port, whole or not at all (a reader polling the file never sees half a number)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(f"{port}\n")
    partial.replace(path)


def read_port_file(path: Path) -> int | None:
    """The port a worker wrote; None until it has."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def run_worker(settings: Settings, port_file: Path | None = None) -> None:
    """Run the Faust worker in this process until SIGINT/SIGTERM. With ``web_port`` 0 it picks
    a free port; either way it prints where its web server listens and, given ``port_file``,
    writes the port there (how a parent process learns a port the worker chose)."""
    import faust

    from streams.app import build_app
    from streams.http_auth import parse_tokens
    from streams.kafka_config import security_from_settings
    from streams.topics import admin_client, cluster_size

    settings = resolve_web_port(settings)
    print(f"worker web on {web_url(settings.web_host, settings.web_port)}", flush=True)
    # how it connects and who may call it (never a secret)
    tokens = parse_tokens(settings.api_tokens)
    print(
        f"kafka {settings.bootstrap}: {security_from_settings(settings).describe()}; "
        f"API tokens: {', '.join(tokens.roles) or 'none (mutating requests: loopback only)'}",
        flush=True,
    )
    if port_file is not None:
        write_port_file(port_file, settings.web_port)
    # the accounting thread is CPU-bound; longer GIL slices spare it switches to the event loop
    # (web views and timers), which only needs the GIL briefly
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # the hot path allocates short-lived dicts by the million and builds no cycles: collect the
    # young generation far less often (the default, 700 allocations, costs ~10 % of throughput)
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    app = build_app(settings, brokers=cluster_size(admin_client(settings)))
    Path(app.conf.datadir).parent.mkdir(parents=True, exist_ok=True)
    loop = "uvloop" if _has_uvloop() else None
    worker = faust.Worker(app, loglevel=settings.log_level, loop=_event_loop(loop))
    worker.execute_from_commandline()


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _event_loop(kind: str | None) -> Any:
    import asyncio

    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class ApiAuthError(RuntimeError):
    """The worker refused the request's token (401/403); the message says the fix."""


def api_headers(token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` with ``token``, else GOVERNOR_API_TOKEN (none if unset)."""
    token = os.environ.get("GOVERNOR_API_TOKEN", "") if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def auth_fix(status: int, url: str) -> str:
    """One line saying why the worker refused and what to do (never the token)."""
    if status == 401:
        return (
            f"the worker at {url} needs a token: set GOVERNOR_API_TOKEN to a token from its "
            "GOVERNOR_API_TOKENS (an admin token for changes)"
        )
    return (
        f"the worker at {url} refused this token's role: set GOVERNOR_API_TOKEN to an admin "
        "token from its GOVERNOR_API_TOKENS"
    )


def fetch_json(url: str, timeout_s: float = 5.0, token: str | None = None) -> Any:
    """GET a JSON answer; None when nothing answers; :class:`ApiAuthError` when the worker
    refuses the token (GOVERNOR_API_TOKEN unless ``token`` is given)."""
    request = urllib.request.Request(url, headers=api_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ApiAuthError(auth_fix(exc.code, url)) from None
        return None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def post_json(
    url: str, payload: Any, timeout_s: float = 30.0, token: str | None = None
) -> tuple[int, Any] | None:
    """POST JSON with the API token (GOVERNOR_API_TOKEN unless ``token`` is given); (HTTP
    status, JSON answer), error statuses included; None when nothing answers."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **api_headers(token)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": body.decode(errors="replace") or exc.reason}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def get_json_status(url: str, timeout_s: float = 5.0) -> tuple[int, Any] | None:
    """GET JSON; (HTTP status, JSON answer), error statuses included: a 503 from /healthz or
    /readyz is an answer (degraded), not silence. None when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=api_headers())
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"error": body.decode(errors="replace")[:200] or f"HTTP {status}"}


class WorkerProcess:
    """``governor worker`` as a child process, for the demo and the integration tests.

    With ``web_port`` 0 the child picks a free port: ``settings`` (and ``url``) hold the port
    it chose once ``start`` returns; each start asks for a new one.
    """

    def __init__(self, settings: Settings, log_file: Path) -> None:
        #: the settings as given: a restart asks for the same (web_port 0: any free port)
        self.requested = settings
        self.settings = settings
        self.log_file = log_file
        #: where the child writes its port, next to its log
        self.port_file = log_file.with_name(log_file.name + ".port")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.settings.web_port == 0:
            raise RuntimeError("the worker has not chosen its web port yet (web_port 0): start it")
        return web_url(self.settings.web_host, self.settings.web_port)

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        # a port file left by an earlier start would name that start's port
        self.port_file.unlink(missing_ok=True)
        self.settings = self.requested
        env = {**os.environ, **self.settings.to_env()}
        argv = [sys.executable, "-m", "streams.cli", "worker", "--port-file", str(self.port_file)]
        with self.log_file.open("ab") as fh:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.settings.web_port == 0:
                port = read_port_file(self.port_file)
                if port is not None:
                    self.settings = self.requested.replace(web_port=port)
            if self.settings.web_port != 0 and self.get_json("/ingest") is not None:
                return self
            time.sleep(0.25)
        where = "its web port" if self.settings.web_port == 0 else self.url
        self.stop()
        raise RuntimeError(f"worker did not serve {where} in {timeout_s:.0f}s:\n{self.log_tail()}")

    def get_json(self, path: str) -> Any:
        """GET a JSON view of the worker; None while it does not answer."""
        return fetch_json(self.url + path, timeout_s=2)

    def log_tail(self, lines: int = 40) -> str:
        from streams.stack import log_tail

        return log_tail(self.log_file, lines)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
