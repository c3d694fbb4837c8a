"""The sandbox that runs user generator code: a pool of persistent worker processes.

User code never runs in the Dagster process. Each worker (`worker.py`) is a separate Python
started with an environment built from an allow-list, so no AWS, database, WhatsApp or
Gemini variable reaches it, and under hard limits on memory and file size; CPU time is
capped per member. The parent enforces the wall-clock timeout by killing the worker's
process group and starting a replacement. Workers stay up between members so each compiles
a generator version once, not once per member.

What a worker returns is untrusted: `validate_files` checks every path before the parent
uploads anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from resources import settings
from resources.asset_kinds import ASSET_KINDS, MB

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"

# Variables a generator may see; everything else (credentials, URLs, tokens) is left out.
ALLOWED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

LARGEST_ASSET = max(kind.max_bytes for kind in ASSET_KINDS.values())


@dataclass(frozen=True)
class Limits:
    workers: int = 5
    timeout_seconds: float = 60.0
    memory_mb: int = 512
    cpu_seconds: int = 30

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            workers=settings.number("MAX_CONCURRENT_GENERATIONS"),
            timeout_seconds=settings.number("MEDIA_TIMEOUT_SECONDS"),
            memory_mb=settings.number("MEDIA_MEMORY_MB"),
            cpu_seconds=settings.number("MEDIA_CPU_SECONDS"),
        )


@dataclass(frozen=True)
class Generator:
    """One stored version of a template's generator."""

    template_id: int
    version: int
    file_name: str
    source: str

    @property
    def key(self) -> str:
        return f"{self.template_id}:{self.version}"


@dataclass(frozen=True)
class MemberInput:
    attributes: dict[str, Any]
    name: str | None
    msisdn: str


@dataclass(frozen=True)
class GeneratedFile:
    asset_type: str
    path: Path
    extension: str
    content_type: str


@dataclass
class Outcome:
    """One generator call: the validated files, or why the member failed."""

    files: list[GeneratedFile] = field(default_factory=list)
    error: str | None = None
    retryable: bool = True
    output: str = ""
    preview: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def sandbox_env() -> dict[str, str]:
    return {name: os.environ[name] for name in ALLOWED_ENV if os.environ.get(name)}


class SandboxWorker:
    """One worker process and its two pipes."""

    def __init__(self, limits: Limits) -> None:
        worker_limits = {
            "memory_bytes": limits.memory_mb * MB,
            "file_size_bytes": LARGEST_ASSET + MB,
            "cpu_seconds": limits.cpu_seconds,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(WORKER_SCRIPT), json.dumps(worker_limits)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=sandbox_env(),
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )
        self.requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The worker's reply; raises `WorkerLost` (and leaves the worker dead) otherwise."""
        try:
            self.requests.send_bytes(json.dumps(request).encode())
            if not self.replies.poll(timeout):
                self.kill()
                raise WorkerLost(f"timed out after {timeout:g} s (wall clock); worker replaced")
            reply = json.loads(self.replies.recv_bytes(maxlength=16 * MB))
        except (EOFError, OSError, ValueError):
            self.kill()
            raise WorkerLost(self.death_reason()) from None
        if not isinstance(reply, dict):
            self.kill()
            raise WorkerLost("worker sent an unreadable reply; worker replaced")
        return reply

    def death_reason(self) -> str:
        code = self.process.wait()
        if code == -signal.SIGXCPU:
            return "CPU time limit exceeded; worker replaced"
        if code < 0:
            return f"worker killed by {signal.Signals(-code).name}; worker replaced"
        return f"worker exited with status {code}; worker replaced"

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.requests.close()
        self.replies.close()

    def stop(self) -> None:
        self.requests.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.kill()


class WorkerLost(Exception):
    """The worker died or was killed during a call."""


class WorkerPool:
    """`limits.workers` persistent workers shared by any number of threads."""

    def __init__(self, limits: Limits, work_dir: Path) -> None:
        self.limits = limits
        self.work_dir = work_dir.resolve()
        self._idle: queue.Queue[SandboxWorker] = queue.Queue()
        self._all: list[SandboxWorker] = []
        for _ in range(limits.workers):
            self._release(SandboxWorker(limits))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._all:
            worker.stop()

    def _release(self, worker: SandboxWorker) -> None:
        if worker not in self._all:
            self._all.append(worker)
        self._idle.put(worker)

    def generate(
        self, generator: Generator, member: MemberInput, member_dir: Path, preview: bool = False
    ) -> Outcome:
        """Run the generator for one member in `member_dir/files`; files stay there for upload."""
        temp_dir = member_dir / "files"
        temp_dir.mkdir(parents=True)
        request = {
            "generator": generator.key,
            "file_name": generator.file_name,
            "source": generator.source,
            "attributes": member.attributes,
            "name": member.name,
            "msisdn": member.msisdn,
            "temp_dir": str(temp_dir),
            "output_path": str(member_dir / "output.log"),
            "preview": preview,
        }
        worker = self._idle.get()
        try:
            reply = worker.call(request, self.limits.timeout_seconds)
        except WorkerLost as lost:
            self._all.remove(worker)
            self._release(SandboxWorker(self.limits))
            return Outcome(error=str(lost), output=_read_tail(member_dir / "output.log"))
        self._release(worker)
        output = str(reply.get("output") or "")
        if not reply.get("ok"):
            return Outcome(
                error=str(reply.get("error")),
                retryable=bool(reply.get("retryable", True)),
                output=output,
            )
        try:
            files = validate_files(reply.get("result"), temp_dir)
        except InvalidAssets as invalid:
            return Outcome(error=str(invalid), output=output)
        return Outcome(files=files, output=output, preview=reply.get("preview") or None)

    def fresh_member_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="member-", dir=self.work_dir))


def _read_tail(path: Path) -> str:
    try:
        return path.read_bytes()[-8192:].decode(errors="replace")
    except OSError:
        return ""


class InvalidAssets(ValueError):
    """What generate_asset returned cannot be uploaded; the message says why."""


def validate_files(result: object, temp_dir: Path) -> list[GeneratedFile]:
    """Every returned path must be a regular file inside `temp_dir`, of a known asset type,
    with an allowed extension and within WhatsApp's size limit for that type.

    `temp_dir` is the parent's own resolved path: were the generator to swap it for a
    symbolic link, every file behind it would resolve outside and be refused."""
    if result is None:
        raise InvalidAssets("generate_asset returned nothing (None); expected {asset_type: path}")
    if not isinstance(result, dict):
        raise InvalidAssets(
            f"generate_asset returned {type(result).__name__}; expected {{asset_type: path}}"
        )
    if not result:
        raise InvalidAssets("generate_asset returned no files")
    root = temp_dir
    files = []
    for asset_type, value in result.items():
        kind = ASSET_KINDS.get(asset_type)
        if kind is None:
            raise InvalidAssets(
                f"unknown asset type {asset_type!r}; allowed: {', '.join(ASSET_KINDS)}"
            )
        if not isinstance(value, str) or not value:
            raise InvalidAssets(f"{asset_type}: expected a file path, got {value!r}")
        path = (root / value).resolve()
        if not path.is_relative_to(root):
            raise InvalidAssets(f"{asset_type}: {value} is outside temp_dir")
        if not path.exists():
            raise InvalidAssets(f"{asset_type}: {value} does not exist")
        if not path.is_file():
            raise InvalidAssets(f"{asset_type}: {value} is not a regular file")
        extension = path.suffix.lower()
        if extension not in kind.extensions:
            raise InvalidAssets(
                f"{asset_type}: {path.name} has an extension that is not allowed for {asset_type}"
                f" (allowed: {', '.join(kind.extensions)})"
            )
        size = path.stat().st_size
        if size > kind.max_bytes:
            raise InvalidAssets(
                f"{asset_type}: {path.name} is {size / MB:.1f} MB, over WhatsApp's"
                f" {kind.max_bytes // MB} MB limit for {asset_type}"
            )
        if kind.magic:
            with path.open("rb") as f:
                head = f.read(16)
            if not any(head.startswith(magic) for magic in kind.magic):
                raise InvalidAssets(f"{asset_type}: {path.name} is not a JPEG or PNG image")
        files.append(GeneratedFile(asset_type, path, extension, kind.extensions[extension]))
    return files


def remove_member_dir(member_dir: Path) -> None:
    shutil.rmtree(member_dir, ignore_errors=True)
