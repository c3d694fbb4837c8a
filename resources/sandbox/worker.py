"""A sandbox worker: runs user generator code, one audience member at a time, outside Dagster.

`pool.WorkerPool` starts it as a script (`python -I worker.py <config>`) with a scrubbed
environment, usually inside namespaces of its own (`isolation.py`), so it imports nothing of
the project and no secret reaches it. Before any user code runs, `confine` makes the file
systems read-only, mounts a small tmpfs as the only writable place, switches uid when told
to and drops every capability; `apply_limits` then sets hard limits on memory, file size,
processes and CPU time.

It reads length-prefixed JSON requests on stdin and answers on the stdout it had at start:
a JSON header, then each returned file's bytes in chunks, read from the one descriptor the
checks were made on, so the parent never opens a path the generator chose. While a
generator runs, file descriptors 1 and 2 point at the capture file the parent passed
(`output_fd`), so whatever the user's code prints goes to the run log and never into the
protocol. JSON, not pickle, crosses the pipe: the parent must never unpickle what user code
could forge.
"""

import base64
import contextlib
import ctypes
import errno
import io
import json
import math
import os
import resource
import shutil
import signal
import socket
import stat
import sys
import time
import traceback
from multiprocessing.connection import Connection

OUTPUT_TAIL_BYTES = 8192
PREVIEW_PIXELS = 240
PREVIEW_FORMATS = ("JPEG", "PNG")
# The generator's own frames reported with a failure: the innermost ones, each line cut.
TRACEBACK_FRAMES = 20
TRACEBACK_LINE_CHARS = 300
CHUNK_BYTES = 1 << 20
CPU_EXCEEDED = 128 + signal.SIGXCPU  # exit status after the CPU-time limit
CONFINED_ROOT = "/tmp"  # the private tmpfs, inside the worker's mount namespace

# Linux constants (include/uapi): mount(2), mount_setattr(2), prctl(2), capset(2).
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC = 0x2, 0x4, 0x1000, 0x4000
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() or None,
        ),
        f"mount {target}",
    )


def confine(config: dict) -> set[str]:
    """Runs first, with the namespaces' privileges, before any user code: afterwards the
    process can write only to its tmpfs and holds no capability, in any namespace.

    Returns the entries of the tmpfs that hold Python's own paths bound back (a checkout
    in /tmp), which stay there."""
    uid = config.get("uid")
    keep = python_paths()
    # Python's own paths under the folder the private tmpfs covers (a checkout in /tmp):
    # held open now, bound back read-only once the tmpfs is there.
    in_tmpfs = {
        path: os.open(path, os.O_PATH | os.O_CLOEXEC)
        for path in keep
        if _within(path, CONFINED_ROOT)
    }
    hidden = set(config.get("conceal", ()))
    if uid is not None:
        hidden.update(filter(None, map(_first_closed_folder, keep)))
    cover(sorted(hidden, key=len), keep)
    _read_only("/")
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    budget = config.get("write_budget_bytes", 64 << 20)
    files = config.get("max_files", 1024)
    _mount(
        "tmpfs",
        CONFINED_ROOT,
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"size={budget},nr_inodes={files},mode=0700{owner}",
    )
    for path, handle in in_tmpfs.items():
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        os.close(handle)
        _read_only(path)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    nothing = (ctypes.c_uint32 * 6)()
    _check(libc.capset(header, nothing), "drop capabilities")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no new privileges")
    os.chdir(CONFINED_ROOT)
    os.environ["TMPDIR"] = CONFINED_ROOT  # the only writable place
    return {os.path.relpath(path, CONFINED_ROOT).split("/")[0] for path in in_tmpfs}


def _read_only(path: str) -> None:
    """Make the mount at `path`, and every mount under it, read-only."""
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(
        libc.syscall(
            SYS_MOUNT_SETATTR,
            AT_FDCWD,
            path.encode(),
            AT_RECURSIVE,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        ),
        f"read-only {path}",
    )


def python_paths() -> list[str]:
    """What this interpreter may still need to read: its executable's folder and every
    entry of `sys.path` (standard library, the virtualenv's packages)."""
    paths = {os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def cover(folders: list[str], keep: list[str]) -> None:
    """Hide each folder (outermost first) under an empty tmpfs, with only the paths Python
    needs bound back in: a folder the sandbox uid cannot enter (pyenv under `/root`), the
    home folder and the state folder of a user namespace's user. The generator then sees
    nothing else of them, sockets included."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        inside = [path for path in keep if _within(path, folder)]
        handles = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in inside}
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for path, handle in handles.items():
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
            os.close(handle)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _first_closed_folder(path: str) -> str | None:
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def probe_report() -> dict:
    """What the worker sees once confined; `isolation.probe` judges it."""
    with open("/proc/self/status") as f:
        status = f.read()
    capabilities = int(status.split("CapEff:")[1].split()[0], 16)
    return {
        "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        "interfaces": [name for _, name in socket.if_nameindex()],
        "capabilities": capabilities,
        "read_only_root": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
        "uid": os.getuid(),
    }


def apply_limits(limits: dict) -> None:
    """Hard limits the generator cannot raise again; CPU time is re-armed per member within
    the worker's hard budget."""
    memory = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    file_size = limits["file_size_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    budget = limits["cpu_budget_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (budget, budget))
    if limits.get("confine"):
        processes = limits["max_processes"]
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    # A write past RLIMIT_FSIZE then fails with an error the generator sees, instead of
    # killing the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if os.getpid() == 1:
        # The init of a PID namespace ignores signals it has no handler for.
        signal.signal(signal.SIGXCPU, lambda *_: os._exit(CPU_EXCEEDED))


def cpu_used() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return math.ceil(usage.ru_utime + usage.ru_stime)


def arm_cpu_limit(seconds: int) -> None:
    """RLIMIT_CPU counts the whole process's life: allow `seconds` more from now."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_used() + seconds, hard), hard))


def load(source: str, file_name: str):
    """Compile and run the generator module; returns its `generate_asset`."""
    try:
        code = compile(source, file_name, "exec")
    except SyntaxError as error:
        raise LoadError(
            f"{file_name} does not compile: {error.msg} (line {error.lineno})",
            own_traceback(error, file_name, source),
        ) from None
    namespace = {"__name__": "generator", "__file__": file_name}
    exec(code, namespace)
    generate = namespace.get("generate_asset")
    if not callable(generate):
        raise LoadError(
            f"{file_name} defines no generate_asset(attributes, name, msisdn, temp_dir)"
        )
    return generate


class LoadError(Exception):
    """The generator's source cannot be used at all; retrying it cannot help."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []


class Refused(Exception):
    """What generate_asset returned cannot be used; the message says why."""


def describe(error: BaseException, file_name: str) -> str:
    """The exception, and where in the generator it was raised."""
    if isinstance(error, MemoryError):
        return "memory limit exceeded (MemoryError)"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == file_name]
    where = f" at {file_name} line {frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def own_traceback(error: BaseException, file_name: str, source: str) -> list[str]:
    """The traceback's lines that belong to the generator's code, each frame as Python
    prints it, its text taken from the source that was run (never from a file on disk)."""
    lines = source.splitlines()
    if isinstance(error, SyntaxError):
        frames = [(error.lineno, None)] if error.lineno else []
    else:
        frames = [
            (frame.lineno, frame.name)
            for frame in traceback.extract_tb(error.__traceback__)
            if frame.filename == file_name
        ]
    shown = []
    for lineno, function in frames[-TRACEBACK_FRAMES:]:
        where = f'  File "{file_name}", line {lineno}' + (f", in {function}" if function else "")
        shown.append(where[:TRACEBACK_LINE_CHARS])
        if lineno and 0 < lineno <= len(lines) and lines[lineno - 1].strip():
            shown.append(f"    {lines[lineno - 1].strip()}"[:TRACEBACK_LINE_CHARS])
    return shown


def peak_memory_mb() -> float:
    """The highest resident set of this worker or any process it waited for, in MB."""
    peak_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return round(peak_kb / 1024, 1)


def open_returned(result: object, temp_dir: str, kinds: dict) -> list[tuple[str, str, int]]:
    """(asset type, file name, open descriptor) for every returned file.

    Each path is walked from `temp_dir` one component at a time with O_NOFOLLOW, so no
    symbolic link and no `..` leads out of it; the file must be regular, have one link and
    fit WhatsApp's limit for its type. Everything after reads this descriptor."""
    if result is None:
        raise Refused("generate_asset returned nothing (None); expected {asset_type: path}")
    if not isinstance(result, dict):
        raise Refused(
            f"generate_asset returned {type(result).__name__}; expected {{asset_type: path}}"
        )
    if not result:
        raise Refused("generate_asset returned no files")
    opened: list[tuple[str, str, int]] = []
    try:
        for asset_type, value in result.items():
            value = os.fspath(value) if isinstance(value, os.PathLike) else value
            kind = kinds.get(asset_type)
            if kind is None:
                raise Refused(f"unknown asset type {asset_type!r}; allowed: {', '.join(kinds)}")
            if not isinstance(value, str) or not value:
                raise Refused(f"{asset_type}: expected a file path, got {value!r}")
            fd = _open_inside(asset_type, value, temp_dir)
            opened.append((asset_type, os.path.basename(value), fd))
            _check_descriptor(asset_type, value, fd, kind["max_bytes"])
    except BaseException:
        for _, _, fd in opened:
            os.close(fd)
        raise
    return opened


def _open_inside(asset_type: str, value: str, temp_dir: str) -> int:
    relative = value
    if os.path.isabs(value):
        if not value.startswith(temp_dir.rstrip("/") + "/"):
            raise Refused(f"{asset_type}: {value} is outside temp_dir")
        relative = value[len(temp_dir.rstrip("/")) + 1 :]
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise Refused(f"{asset_type}: {value} is outside temp_dir")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(temp_dir, flags | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            extra = os.O_NONBLOCK if last else os.O_DIRECTORY
            try:
                next_fd = os.open(part, flags | extra, dir_fd=fd)
            except FileNotFoundError:
                raise Refused(f"{asset_type}: {value} does not exist") from None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(
                        f"{asset_type}: {value} goes through a symbolic link; only files"
                        " inside temp_dir are accepted"
                    ) from None
                raise Refused(
                    f"{asset_type}: {value} cannot be opened ({error.strerror})"
                ) from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_descriptor(asset_type: str, value: str, fd: int, max_bytes: int) -> None:
    info = os.fstat(fd)
    name = os.path.basename(value)
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{asset_type}: {value} is not a regular file")
    if info.st_nlink != 1:
        raise Refused(
            f"{asset_type}: {name} has {info.st_nlink} links; a hard link is not accepted"
        )
    if info.st_size > max_bytes:
        mb = 1024 * 1024
        raise Refused(
            f"{asset_type}: {name} is {info.st_size / mb:.1f} MB, over WhatsApp's"
            f" {max_bytes // mb} MB limit for {asset_type}"
        )


def preview(fd: int, image_format: str = "JPEG") -> str | None:
    """A small thumbnail (JPEG or PNG) of the generated image, made here so the parent never
    decodes untrusted image data."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(read_all(fd))) as image:
            image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
            buffer = io.BytesIO()
            options = {"quality": 70} if image_format == "JPEG" else {"optimize": True}
            image.convert("RGB").save(buffer, image_format, **options)
    except Exception:
        return None
    return base64.b64encode(buffer.getvalue()).decode()


def read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, CHUNK_BYTES, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def tail(fd: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, OUTPUT_TAIL_BYTES, max(0, size - OUTPUT_TAIL_BYTES)).decode(
        errors="replace"
    )


def stop_strays() -> None:
    """As the init of its PID namespace, kill every other process there (whatever the
    generator started, `setsid` or not) and reap them."""
    if os.getpid() != 1:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


class Worker:
    def __init__(self, config: dict, replies: Connection, kept: set[str]) -> None:
        self.config = config
        self.replies = replies
        self.generators: dict[str, object] = {}
        self.stderr = os.dup(2)
        self.output = config["output_fd"]
        self.root = CONFINED_ROOT if config.get("confine") else config["files_root"]
        self.members = 0
        self.kept = kept  # the tmpfs's entries that are not the members' (see `confine`)

    def handle(self, request: dict) -> None:
        self.members += 1
        temp_dir = os.path.join(self.root, f"member-{self.members}")
        os.mkdir(temp_dir, 0o700)
        os.ftruncate(self.output, 0)
        os.lseek(self.output, 0, os.SEEK_SET)
        os.dup2(self.output, 1)
        os.dup2(self.output, 2)
        started = time.monotonic()
        try:
            reply, result = self.generate(request, temp_dir)
        finally:
            seconds = time.monotonic() - started
            sys.stdout.flush()
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            os.dup2(self.stderr, 2)
            stop_strays()
        threads = len(os.listdir("/proc/self/task"))
        opened: list[tuple[str, str, int]] = []
        if reply["ok"] and threads > 1:
            reply = {
                "ok": False,
                "error": "generate_asset returned while threads it started were still running;"
                " worker replaced",
                "retryable": False,
            }
        elif reply["ok"]:
            reply, opened = self.open_files(request, result, temp_dir)
        retire = threads > 1 or not self.clean(temp_dir)
        reply["output"] = tail(self.output)
        reply["seconds"] = round(seconds, 3)
        reply["peak_memory_mb"] = peak_memory_mb()
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        reply["retire"] = retire or hard - cpu_used() < self.config["cpu_seconds"]
        self.send(reply, opened)

    def generate(self, request: dict, temp_dir: str) -> tuple[dict, object]:
        file_name = request["file_name"]
        os.chdir(temp_dir)
        arm_cpu_limit(self.config["cpu_seconds"])
        try:
            generate = self.generators.get(request["generator"])
            if generate is None:
                generate = load(request["source"], file_name)
                self.generators[request["generator"]] = generate
            result = generate(request["attributes"], request["name"], request["msisdn"], temp_dir)
        except LoadError as error:
            reply = {"ok": False, "error": str(error), "retryable": False}
            return {**reply, "traceback": error.lines}, None
        except BaseException as error:
            lines = own_traceback(error, file_name, request["source"])
            reply = {"ok": False, "error": describe(error, file_name), "retryable": True}
            return {**reply, "traceback": lines}, None
        return {"ok": True}, result

    def open_files(self, request: dict, result: object, temp_dir: str) -> tuple[dict, list]:
        """Runs once nothing the generator started is left, so nothing changes a file
        between its checks and its sending."""
        try:
            opened = open_returned(result, temp_dir, self.config["kinds"])
        except Refused as refused:
            return {"ok": False, "error": str(refused), "retryable": True}, []
        reply = {"ok": True, "files": [[asset_type, name] for asset_type, name, _ in opened]}
        images = [fd for asset_type, _, fd in opened if asset_type == "image"]
        image_format = request.get("preview")
        if image_format in PREVIEW_FORMATS and images:
            reply["preview"] = preview(images[0], image_format)
        return reply, opened

    def clean(self, temp_dir: str) -> bool:
        """Empty the member's folder; False when the generator made that impossible."""
        os.chdir(self.root)
        shutil.rmtree(temp_dir, ignore_errors=True)
        return set(os.listdir(self.root)) <= self.kept

    def send(self, reply: dict, opened: list[tuple[str, str, int]]) -> None:
        """The header, then each file as chunks ending with an empty one."""
        self.replies.send_bytes(json.dumps(reply, default=repr).encode())
        for _, _, fd in opened:
            offset = 0
            while chunk := os.pread(fd, CHUNK_BYTES, offset):
                self.replies.send_bytes(chunk)
                offset += len(chunk)
            self.replies.send_bytes(b"")
            os.close(fd)


def main() -> None:
    config = json.loads(sys.argv[1])
    kept = confine(config) if config.get("confine") else set()
    if config.get("probe"):
        print(json.dumps(probe_report()))
        return
    apply_limits(config)
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout.reconfigure(line_buffering=True)  # keep prints and errors in order
    worker = Worker(config, replies, kept)
    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except EOFError:
            os._exit(0)  # not waiting for any thread the generator left
        worker.handle(request)


if __name__ == "__main__":
    main()
