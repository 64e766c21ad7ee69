"""A redis-server of the test's own, on a free port below the ephemeral range, to pause
(SIGSTOP), kill and restart (empty without AOF) without touching the shared one."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_low_port(low: int = 20_000, high: int = 32_000) -> int:
    """A free TCP port below the ephemeral range (32768-60999 here), so no client's source
    port can take it between a kill and a restart."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


class PrivateRedis:
    """A ``redis-server`` of one test on a port of its own, under ``folder``.

    Without ``aof`` nothing is persisted (``--save "" --appendonly no``): a kill and restart
    brings it back empty. With ``aof`` it keeps an append-only file (fsync every second).
    """

    def __init__(self, folder: Path, *, aof: bool = False, port: int | None = None) -> None:
        self.folder = folder
        self.aof = aof
        self.port = port or free_low_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> PrivateRedis:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (make setup installs it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            server,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec",
            "--protected-mode", "yes",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=self.folder)
        self.stopped = False
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer in {timeout_s:.0f}s")

    def client(self, timeout_s: float = 5.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )

    def ping(self) -> bool:
        client = self.client(0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGSTOP: the server keeps its connections and answers nothing."""
        self._signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        self._signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL, no goodbye: without AOF everything in it is gone."""
        self._signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        self.stopped = False

    def restart(self) -> PrivateRedis:
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.cont()
            self.kill()
        return self.start()

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.stopped:
            self.cont()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
