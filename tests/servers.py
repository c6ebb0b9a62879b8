"""Real servers run as subprocesses for the tests (``mlflow server``, ``phoenix serve``): a free
loopback port, a log file in the server's folder, its own session so ``stop()`` ends the whole
process group, and a poll of its health URL until it answers. Standard library only:
phoenix_server.py also runs under Phoenix's interpreter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess in ``folder`` on ``url``; subclasses build the command and call
    ``launch``. ``stop()`` then ``start()`` again keeps the folder and the port."""

    name = "server"
    health_path = "/health"
    poll_seconds = 0.2
    tail_lines = 30
    stop_seconds = 10.0

    def __init__(self, folder: Path, port: int | None = None, log_name: str = "server.log") -> None:
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / log_name

    def start(self, timeout: float = 60.0) -> Self:
        raise NotImplementedError

    def launch(self, command: Sequence[str], env: Mapping[str, str], timeout: float, *,
               append_log: bool = False) -> None:
        """Start ``command`` in the folder, output to the log, and wait until the health URL says 200."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if append_log else "wb") as log_file:
            self.process = subprocess.Popen(
                list(command), cwd=self.folder, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(self.poll_seconds)  # polling a starting subprocess, not waiting for an export
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float | None = None) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the group id is its pid
        except ProcessLookupError:
            return
        try:
            process.wait(self.stop_seconds if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(5)

    def log_tail(self, lines: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-(lines or self.tail_lines):])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
