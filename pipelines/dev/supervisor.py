"""Runs the stack's long-lived processes side by side, as `make dev` does.

One process owns the others: it starts them in their own process groups, says where each
listens once it answers, prints every line they print labelled with the service's name,
and stops them all on Ctrl-C, on SIGTERM, or as soon as one dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

import httpx

from pipelines.dev.local_stack import StackError, port_is_free


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    host: str | None = None
    port: int | None = None
    ready_path: str = "/"

    @property
    def url(self) -> str | None:
        return f"http://{self.host}:{self.port}" if self.port else None


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def supervise(services: list[Service], env: dict[str, str], ready_timeout: float = 180.0) -> int:
    """Run until interrupted (exit 0) or until a service exits by itself (exit 1)."""
    check_ports(services)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must stop us however started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    running: dict[str, subprocess.Popen] = {}
    try:
        for service in services:
            running[service.name] = subprocess.Popen(
                service.argv,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            threading.Thread(
                target=_relay,
                args=(service.name, running[service.name].stdout),
                name=f"relay-{service.name}",
                daemon=True,
            ).start()
        _wait_until_ready(services, running, ready_timeout)
        for service in services:
            where = f"{service.url}" if service.url else "running"
            print(f"  {service.name:<14} {where}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        while True:
            for name, process in running.items():
                if process.poll() is not None:
                    print(
                        f"{name} exited with code {process.returncode}; stopping the stack",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping…", flush=True)
        return 0
    finally:
        _stop_all(running)


def _relay(name: str, output: IO[bytes]) -> None:
    """Every line a service prints, labelled with the service's name."""
    label = f"{name:<14} | ".encode()
    for line in output:
        sys.stdout.buffer.write(label + line)
        sys.stdout.buffer.flush()


def check_ports(services: list[Service]) -> None:
    for service in services:
        if service.port and not port_is_free(service.host, service.port):
            raise StackError(
                f"cannot start {service.name}: port {service.port} on {service.host} is in use"
            )


def _wait_until_ready(
    services: list[Service], running: dict[str, subprocess.Popen], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    pending = [s for s in services if s.url]
    while pending:
        for name, process in running.items():
            if process.poll() is not None:
                raise StackError(f"{name} exited with code {process.returncode} during start-up")
        if time.monotonic() > deadline:
            raise StackError(
                f"{pending[0].name} did not answer on {pending[0].url} within {timeout:.0f} s"
            )
        try:
            httpx.get(pending[0].url + pending[0].ready_path, timeout=2.0)
            pending.pop(0)
        except httpx.HTTPError:
            time.sleep(0.5)


def _stop_all(running: dict[str, subprocess.Popen], grace: float = 20.0) -> None:
    for process in running.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
