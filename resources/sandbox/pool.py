"""The sandbox that runs user generator code: a pool of persistent worker processes.

User code never runs in the Dagster process. Each worker (`worker.py`) is a separate Python
started with an environment built from an allow-list, inside namespaces of its own under
the strongest mechanism the host allows (`isolation.py`), and under hard limits on memory,
file size, processes, bytes written and CPU time. The parent enforces the wall-clock
timeout by killing the worker, which takes its whole PID namespace with it, and starting a
replacement. Workers stay up between members so each compiles a generator version once, not
once per member.

What a worker returns is untrusted: the parent never opens a path the generator chose. The
worker streams each file's bytes from the descriptor it checked; the parent spools them in
its own private folder, checks their size and sniffs their type from the content, and
uploads what it checked. The image preview is checked too before it reaches Dagster.
`run_sample` is the one way to run a source for a single sample member.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from resources import settings
from resources.asset_kinds import ASSET_KINDS, MB, SNIFF_BYTES, content_matches
from resources.sandbox.isolation import WORKER_SCRIPT, Isolation, resolve

# Variables a generator may see; everything else (credentials, URLs, tokens) is left out.
ALLOWED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
# Numeric libraries start no thread pool of their own: a generator must leave no thread
# running when it returns.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

LARGEST_ASSET = max(kind.max_bytes for kind in ASSET_KINDS.values())
# What one member may write in all (the worker's tmpfs), and in how many files.
WRITE_BUDGET_BYTES = LARGEST_ASSET + 28 * MB
MAX_FILES = 4096
# Processes of the sandbox uid at once, the worker included.
MAX_PROCESSES = 64
# A worker's hard CPU-time limit, in members' worth of MEDIA_CPU_SECONDS; it retires when
# less than one member's worth is left.
CPU_BUDGET_MEMBERS = 20
CHUNK_BYTES = 1 << 20
SPOOL_IN_MEMORY_BYTES = MB
# The preview goes into Dagster metadata: a small JPEG, as base64. A sample's thumbnail is
# a PNG (lossless, larger), for the operator API and console.
PREVIEW_MAX_CHARS = {"JPEG": 64_000, "PNG": 400_000}
PREVIEW_MAX_PIXELS = 240
# What a failed call may report of the generator's own traceback.
TRACEBACK_MAX_LINES = 40
TRACEBACK_MAX_CHARS = 300


def default_workers() -> int:
    """One worker per core this process may run on. A generator is CPU-bound: 5 workers on
    2 cores generated fewer members per second than a plain loop, and each extra worker is
    one more process resident for the whole run."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Limits:
    """Read by `settings.load(Limits)` when a run or a preview starts."""

    workers: int = settings.setting("MAX_CONCURRENT_GENERATIONS", default_factory=default_workers)
    timeout_seconds: float = settings.setting("MEDIA_TIMEOUT_SECONDS")
    memory_mb: int = settings.setting("MEDIA_MEMORY_MB")
    cpu_seconds: int = settings.setting("MEDIA_CPU_SECONDS")


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


@dataclass
class GeneratedFile:
    """One returned file, spooled by the parent: `body` is what was checked."""

    asset_type: str
    name: str
    extension: str
    content_type: str
    size: int
    body: IO[bytes]

    def read(self) -> bytes:
        self.body.seek(0)
        return self.body.read()


@dataclass
class Outcome:
    """One generator call: the checked files, or why the member failed; how long it took and
    the worker's peak memory (None when the worker was lost), and the failure's traceback
    lines that belong to the generator's code."""

    files: list[GeneratedFile] = field(default_factory=list)
    error: str | None = None
    retryable: bool = True
    output: str = ""
    preview: str | None = None
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    traceback: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def close(self) -> None:
        for file in self.files:
            file.body.close()


def sandbox_env() -> dict[str, str]:
    allowed = {name: os.environ[name] for name in ALLOWED_ENV if os.environ.get(name)}
    return {**allowed, **SINGLE_THREADED}


class WorkerLost(Exception):
    """The worker died, was killed or broke the protocol during a call."""


class SandboxWorker:
    """One worker process, its two pipes and the file its output is captured in."""

    def __init__(self, limits: Limits, isolation: Isolation, work_dir: Path) -> None:
        self.timeout = limits.timeout_seconds
        self.output = tempfile.TemporaryFile(dir=work_dir)  # noqa: SIM115 - closed in stop()
        # Without namespaces (no tmpfs of its own), members' folders are made in here.
        files_root = None if isolation.confined else tempfile.mkdtemp(dir=work_dir)
        config = {
            "confine": isolation.confined,
            "uid": isolation.uid,
            "conceal": isolation.concealed(),
            "files_root": files_root,
            "output_fd": self.output.fileno(),
            "memory_bytes": limits.memory_mb * MB,
            "file_size_bytes": LARGEST_ASSET + MB,
            "write_budget_bytes": WRITE_BUDGET_BYTES,
            "max_files": MAX_FILES,
            "max_processes": MAX_PROCESSES,
            "cpu_seconds": limits.cpu_seconds,
            "cpu_budget_seconds": limits.cpu_seconds * CPU_BUDGET_MEMBERS,
            "kinds": {name: {"max_bytes": kind.max_bytes} for name, kind in ASSET_KINDS.items()},
        }
        self.process = subprocess.Popen(
            [*isolation.command, sys.executable, "-I", str(WORKER_SCRIPT), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=sandbox_env(),
            cwd="/",
            start_new_session=True,
            pass_fds=(self.output.fileno(),),
        )
        self.requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()

    def call(
        self, request: dict[str, Any], spool_dir: Path
    ) -> tuple[dict[str, Any], list[tuple[str, str, IO[bytes], int]]]:
        """The worker's reply header and the returned files, spooled; raises `WorkerLost`
        (and leaves the worker dead) otherwise."""
        deadline = time.monotonic() + self.timeout
        files: list[tuple[str, str, IO[bytes], int]] = []
        try:
            self.requests.send_bytes(json.dumps(request).encode())
            reply = json.loads(self._receive(deadline, 16 * MB))
            if not isinstance(reply, dict):
                raise WorkerLost("worker sent an unreadable reply; worker replaced")
            for asset_type, name in _announced(reply):
                body = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - the outcome closes it
                    SPOOL_IN_MEMORY_BYTES, dir=spool_dir
                )
                files.append((asset_type, name, body, 0))
                size = self._spool(body, deadline, ASSET_KINDS[asset_type].max_bytes)
                files[-1] = (asset_type, name, body, size)
        except WorkerLost:
            _close_all(files)
            self.kill()
            raise
        except (EOFError, OSError, ValueError, TypeError) as error:
            _close_all(files)
            if isinstance(error, (EOFError, BrokenPipeError)):  # it died: let its status arrive
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=5)
            self.kill()
            raise WorkerLost(self.death_reason()) from None
        return reply, files

    def _receive(self, deadline: float, limit: int) -> bytes:
        if not self.replies.poll(max(deadline - time.monotonic(), 0)):
            raise WorkerLost(f"timed out after {self.timeout:g} s (wall clock); worker replaced")
        return self.replies.recv_bytes(maxlength=limit)

    def _spool(self, body: IO[bytes], deadline: float, limit: int) -> int:
        size = 0
        while chunk := self._receive(deadline, CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise WorkerLost("worker sent more than a file may hold; worker replaced")
            body.write(chunk)
        return size

    def output_tail(self) -> str:
        size = os.fstat(self.output.fileno()).st_size
        return os.pread(self.output.fileno(), 8192, max(0, size - 8192)).decode(errors="replace")

    def death_reason(self) -> str:
        code = self.process.wait()
        if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "CPU time limit exceeded; worker replaced"
        if code < 0:
            return f"worker killed by {signal.Signals(-code).name}; worker replaced"
        return f"worker exited with status {code}; worker replaced"

    def kill(self) -> None:
        """The worker, and with it its PID namespace: every process the generator started."""
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
        self.output.close()


def _announced(reply: dict[str, Any]) -> list[tuple[str, str]]:
    """The files a successful reply says follow, each a known asset type and a name."""
    if not reply.get("ok"):
        return []
    files = reply.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, list) and len(f) == 2 and f[0] in ASSET_KINDS and isinstance(f[1], str)
        for f in files
    ):
        raise WorkerLost("worker sent an unreadable reply; worker replaced")
    return [(asset_type, name) for asset_type, name in files]


def _close_all(files: list[tuple[str, str, IO[bytes], int]]) -> None:
    for _, _, body, _ in files:
        body.close()


class WorkerPool:
    """`limits.workers` persistent workers shared by any number of threads."""

    def __init__(self, limits: Limits, work_dir: Path, isolation: Isolation | None = None) -> None:
        self.limits = limits
        self.isolation = isolation or resolve()
        self.work_dir = work_dir.resolve()
        self._idle: queue.Queue[SandboxWorker] = queue.Queue()
        self._all: list[SandboxWorker] = []
        for _ in range(limits.workers):
            self._release(self._start())

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._all:
            worker.stop()

    def _start(self) -> SandboxWorker:
        return SandboxWorker(self.limits, self.isolation, self.work_dir)

    def _release(self, worker: SandboxWorker) -> None:
        if worker not in self._all:
            self._all.append(worker)
        self._idle.put(worker)

    def _replace(self, worker: SandboxWorker) -> None:
        worker.stop()
        self._all.remove(worker)
        self._release(self._start())

    def generate(
        self,
        generator: Generator,
        member: MemberInput,
        preview: bool = False,
        thumbnail: str = "JPEG",
    ) -> Outcome:
        """Run the generator for one member; the outcome's files are the parent's own copies
        (close the outcome when done with them). With `preview`, the first image also comes
        back as a small `thumbnail` (JPEG or PNG)."""
        request = {
            "generator": generator.key,
            "file_name": generator.file_name,
            "source": generator.source,
            "attributes": member.attributes,
            "name": member.name,
            "msisdn": member.msisdn,
            "preview": thumbnail if preview else None,
        }
        worker = self._idle.get()
        started = time.monotonic()
        try:
            reply, spooled = worker.call(request, self.work_dir)
        except WorkerLost as lost:
            output = worker.output_tail()
            self._replace(worker)
            return Outcome(error=str(lost), output=output, seconds=time.monotonic() - started)
        if reply.get("retire"):
            self._replace(worker)
        else:
            self._release(worker)
        measured = {
            "output": str(reply.get("output") or ""),
            "seconds": _number(reply.get("seconds")) or time.monotonic() - started,
            "peak_memory_mb": _number(reply.get("peak_memory_mb")),
        }
        if not reply.get("ok"):
            return Outcome(
                error=str(reply.get("error")),
                retryable=bool(reply.get("retryable", True)),
                traceback=_lines(reply.get("traceback")),
                **measured,
            )
        preview_data = checked_preview(reply.get("preview"), thumbnail)
        outcome = Outcome(preview=preview_data, **measured)
        try:
            for asset_type, name, body, size in spooled:
                outcome.files.append(check_file(asset_type, name, body, size))
        except InvalidAssets as invalid:
            _close_all(spooled)
            return Outcome(error=str(invalid), **measured)
        return outcome


def _number(value: object) -> float | None:
    """A measurement from the worker's reply, if it is a plausible one (the reply is
    untrusted)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _lines(value: object) -> list[str]:
    """The traceback lines of a reply: strings only, few and short (the reply is untrusted)."""
    if not isinstance(value, list):
        return []
    texts = [line for line in value if isinstance(line, str)]
    return [line[:TRACEBACK_MAX_CHARS] for line in texts[-TRACEBACK_MAX_LINES:]]


class InvalidAssets(ValueError):
    """What generate_asset returned cannot be uploaded; the message says why."""


def check_file(asset_type: str, name: str, body: IO[bytes], size: int) -> GeneratedFile:
    """A returned file of a known asset type must have an allowed extension, fit WhatsApp's
    size limit for that type and hold what its extension says (sniffed from its bytes)."""
    kind = ASSET_KINDS.get(asset_type)
    if kind is None:
        raise InvalidAssets(f"unknown asset type {asset_type!r}; allowed: {', '.join(ASSET_KINDS)}")
    extension = os.path.splitext(name)[1].lower()
    if extension not in kind.extensions:
        raise InvalidAssets(
            f"{asset_type}: {name} has an extension that is not allowed for {asset_type}"
            f" (allowed: {', '.join(kind.extensions)})"
        )
    if size > kind.max_bytes:
        raise InvalidAssets(
            f"{asset_type}: {name} is {size / MB:.1f} MB, over WhatsApp's"
            f" {kind.max_bytes // MB} MB limit for {asset_type}"
        )
    content_type = kind.extensions[extension]
    body.seek(0)
    if not content_matches(content_type, body.read(SNIFF_BYTES)):
        raise InvalidAssets(f"{asset_type}: {name} does not hold {content_type} data")
    body.seek(0)
    return GeneratedFile(asset_type, name, extension, content_type, size, body)


def checked_preview(value: object, image_format: str = "JPEG") -> str | None:
    """The worker's thumbnail, if it is a small, well-formed JPEG (or PNG); re-encoded, so
    only the base64 alphabet reaches the metadata's Markdown."""
    if not isinstance(value, str) or not value or len(value) > PREVIEW_MAX_CHARS[image_format]:
        return None
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    size = jpeg_size(data) if image_format == "JPEG" else png_size(data)
    if size is None or max(size) > PREVIEW_MAX_PIXELS or min(size) < 1:
        return None
    return base64.b64encode(data).decode()


# JPEG start-of-frame markers (every coding process), which carry the image's size.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG whose segments are well formed up to its scan and which
    ends with its end-of-image marker; None for anything else. Reads markers, decodes no
    pixel."""
    if not data.startswith(b"\xff\xd8") or not data.endswith(b"\xff\xd9"):
        return None
    size = None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > len(data):
            return None
        if marker in _SOF_MARKERS and length >= 7:
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return size
        i += 2 + length
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG whose chunks are all well formed (length, ASCII type, CRC),
    starting with its header and ending with its end chunk; None for anything else. Reads
    chunks, decodes no pixel."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    i, size, kinds = len(PNG_SIGNATURE), None, []
    while i + 12 <= len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data) or not kind.isalpha():
            return None
        if zlib.crc32(data[i + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return None
        if kind == b"IHDR" and length == 13:
            size = (
                int.from_bytes(data[i + 8 : i + 12], "big"),
                int.from_bytes(data[i + 12 : i + 16], "big"),
            )
        kinds.append(kind)
        i = end
    if i != len(data) or not kinds or kinds[0] != b"IHDR" or kinds[-1] != b"IEND":
        return None
    return size


@dataclass(frozen=True)
class Sample:
    """One sample member's result: its files (type, content type, bytes), or its error and
    the generator's own traceback lines; its printed output, the first image's PNG
    thumbnail (base64), the time it took and the worker's peak memory."""

    files: list[tuple[str, str, bytes]]
    error: str | None
    output: str
    preview: str | None
    file_names: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    traceback: list[str] = field(default_factory=list)


def run_sample(
    source: str,
    member: MemberInput,
    file_name: str = "generator.py",
    limits: Limits | None = None,
    isolation: Isolation | None = None,
) -> Sample:
    """Run a generator source (a draft or a stored version) for one sample member, in the
    same sandbox and under the same limits as a campaign: the single way to try a source
    outside a campaign run (the operator API's preview calls this). A fresh worker runs it,
    so its peak memory is this member's."""
    limits = replace(limits or settings.load(Limits), workers=1)
    with (
        tempfile.TemporaryDirectory(prefix="waflow-sample-") as work_dir,
        WorkerPool(limits, Path(work_dir), isolation) as pool,
    ):
        generator = Generator(0, 0, file_name, source)
        outcome = pool.generate(generator, member, preview=True, thumbnail="PNG")
        try:
            return Sample(
                files=[(f.asset_type, f.content_type, f.read()) for f in outcome.files],
                error=outcome.error,
                output=outcome.output,
                preview=outcome.preview,
                file_names=[f.name for f in outcome.files],
                seconds=outcome.seconds,
                peak_memory_mb=outcome.peak_memory_mb,
                traceback=outcome.traceback,
            )
        finally:
            outcome.close()
