"""``governor console``: the operations console, a web app over the query layer.

Every figure on a page comes from the functions ``governor ask --json`` and ``governor incident
timeline --json`` print (:mod:`streams.console.source`); each page has a JSON twin under
``/api/`` that returns those answers unchanged. Pages are rendered on the server
(:mod:`streams.console.views`, Jinja2 with autoescaping); the stylesheet and the little script
are shipped in ``static/`` (no CDN). No PII value is ever rendered: the timeline holds none.
Read-only but for two mutations (a policy rollback, opening an incident), each behind an admin
token of ``GOVERNOR_API_TOKENS`` (:mod:`streams.http_auth`).

Two ways to serve it, the same app:

- on its own port: ``governor console`` (default 127.0.0.1:6070), or from code
  :func:`run_console` (blocking) / :func:`serve_console` (a coroutine, until cancelled);
- on the worker's web port, under :data:`WORKER_PREFIX` (``http://127.0.0.1:6066/console/``):
  the worker mounts :func:`build_app` as an aiohttp sub-app (:func:`mount_console`).

aiohttp and jinja2 (the ``[worker]`` extra) are imported only when one of these is called.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from streams.settings import Settings

#: where the worker's web port serves the console
WORKER_PREFIX = "/console"


def build_app(
    settings: Settings, *, root: str = "", bound_host: str = "127.0.0.1"
) -> web.Application:
    """The console's aiohttp app; ``root`` is the path it is mounted under ("" on its own)."""
    from streams.console.server import make_app

    return make_app(settings, root=root, bound_host=bound_host)


def mount_console(parent: web.Application, settings: Settings, prefix: str = WORKER_PREFIX) -> None:
    """Serve the console under ``prefix`` of another aiohttp app (the worker's web server)."""
    parent.add_subapp(prefix, build_app(settings, root=prefix, bound_host=settings.web_host))


async def serve_console(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 6070,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the console on ``host:port`` until cancelled; ``on_ready(bound port)`` once it
    listens (port 0 picks a free one)."""
    from streams.console.server import serve

    await serve(settings, host, port, on_ready=on_ready)


def run_console(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 6070,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the console until interrupted (Ctrl-C): what ``governor console`` runs."""
    asyncio.run(serve_console(settings, host, port, on_ready))
