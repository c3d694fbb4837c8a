"""A sandbox worker: runs user generator code, one audience member at a time, outside Dagster.

`sandbox.WorkerPool` starts it as a script (`python -I worker.py <limits>`) with a scrubbed
environment, so it imports nothing of the project and no secret reaches it. It reads
length-prefixed JSON requests on stdin and answers on the stdout it had at start; while a
generator runs, file descriptors 1 and 2 point at a per-member capture file instead, so
whatever the user's code prints goes to the run log and never into the protocol. JSON, not
pickle, crosses the pipe: the parent must never unpickle what user code could forge.
"""

import base64
import io
import json
import math
import os
import resource
import signal
import sys
import traceback
from multiprocessing.connection import Connection

OUTPUT_TAIL_BYTES = 8192
PREVIEW_PIXELS = 240


def apply_limits(limits: dict) -> None:
    """Hard limits the generator cannot raise again; CPU time is re-armed per member."""
    memory = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    file_size = limits["file_size_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A write past RLIMIT_FSIZE then fails with an error the generator sees, instead of
    # killing the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def arm_cpu_limit(seconds: int) -> None:
    """RLIMIT_CPU counts the whole process's life: allow `seconds` more from now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, hard))


def load(source: str, file_name: str):
    """Compile and run the generator module; returns its `generate_asset`."""
    try:
        code = compile(source, file_name, "exec")
    except SyntaxError as error:
        raise LoadError(
            f"{file_name} does not compile: {error.msg} (line {error.lineno})"
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


def describe(error: BaseException, file_name: str) -> str:
    """The exception, and where in the generator it was raised."""
    if isinstance(error, MemoryError):
        return "memory limit exceeded (MemoryError)"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == file_name]
    where = f" at {file_name} line {frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def preview(path: str) -> str | None:
    """A small JPEG thumbnail of the generated image, made here so the parent never decodes
    untrusted image data."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=70)
    except Exception:
        return None
    return base64.b64encode(buffer.getvalue()).decode()


def tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - OUTPUT_TAIL_BYTES))
        return f.read().decode(errors="replace")


class Worker:
    def __init__(self, limits: dict) -> None:
        self.limits = limits
        self.generators: dict[str, object] = {}
        self.stderr = os.dup(2)

    def handle(self, request: dict) -> dict:
        output_path = request["output_path"]
        capture = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(capture, 1)
        os.dup2(capture, 2)
        os.close(capture)
        try:
            reply = self.generate(request)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            os.dup2(self.stderr, 2)
        reply["output"] = tail(output_path)
        return reply

    def generate(self, request: dict) -> dict:
        file_name = request["file_name"]
        temp_dir = request["temp_dir"]
        os.chdir(temp_dir)
        arm_cpu_limit(self.limits["cpu_seconds"])
        try:
            generate = self.generators.get(request["generator"])
            if generate is None:
                generate = load(request["source"], file_name)
                self.generators[request["generator"]] = generate
            result = generate(request["attributes"], request["name"], request["msisdn"], temp_dir)
        except LoadError as error:
            return {"ok": False, "error": str(error), "retryable": False}
        except BaseException as error:
            return {"ok": False, "error": describe(error, file_name), "retryable": True}
        if isinstance(result, dict):
            result = {
                str(k): os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in result.items()
            }
        reply = {"ok": True, "result": result}
        if (
            request.get("preview")
            and isinstance(result, dict)
            and isinstance(result.get("image"), str)
        ):
            reply["preview"] = preview(result["image"])
        return reply


def main() -> None:
    limits = json.loads(sys.argv[1])
    apply_limits(limits)
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout.reconfigure(line_buffering=True)  # keep prints and errors in order
    worker = Worker(limits)
    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except EOFError:
            return
        replies.send_bytes(json.dumps(worker.handle(request), default=repr).encode())


if __name__ == "__main__":
    main()
