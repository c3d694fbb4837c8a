"""How the media sandbox keeps generator code away from secrets, the network and the host.

Each sandbox worker starts in namespaces of its own (PID, network, mount, IPC, UTS), made
by util-linux `unshare`; the worker then makes every file system read-only, mounts a small
tmpfs as its only writable place, drops every capability and, when the host let us start
as root, switches to a uid of its own (`worker.py`, `confine`). Two mechanisms, strongest
first:

- `root`: Dagster runs as root (a container's usual user). The generator gets the dedicated
  uid `SANDBOX_UID`, so nothing owned by another user is readable to it, in namespaces of
  its own.
- `userns`: an unprivileged user namespace (a developer's laptop, a pod allowed them). The
  generator keeps the Dagster user's uid, but sees no other process, has no network and
  writes nowhere but its tmpfs; the user's home and the state folder are hidden, other
  files that user can read stay readable.

A mechanism counts only once a probe worker, started exactly as the real ones are, has
reported from inside that it sees no other process, has only a loopback interface, holds
no capability and cannot write to `/`. If none passes, generators do not run in
production unless `MEDIA_SANDBOX=trusted` says so; development falls back to a plain
process with a scrubbed environment. Both fallbacks log a warning at every run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from resources import settings

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"

# The uid (and gid) generator code runs as under the `root` mechanism: no account uses it,
# so no file and no process on the host belongs to it.
SANDBOX_UID = 64_999

NAMESPACES = ("--pid", "--net", "--mount", "--ipc", "--uts")
PROBE_TIMEOUT_SECONDS = 30.0
SANDBOX_CHOICES = ("auto", "trusted")


class SandboxUnavailable(RuntimeError):
    """No mechanism isolates generator code on this host and running without is not allowed."""


@dataclass(frozen=True)
class Isolation:
    """How the workers are started: the command that puts them in their namespaces, and
    the uid they switch to."""

    mechanism: str  # root | userns | none
    command: tuple[str, ...] = ()
    uid: int | None = None
    warning: str | None = None

    @property
    def confined(self) -> bool:
        return self.mechanism != "none"

    def concealed(self) -> list[str]:
        """Folders the generator must not see: the platform's state (the embedded
        PostgreSQL's socket and data) and, in a user namespace, the user's home."""
        folders = [str(Path(settings.get("STATE_DIR") or ".state").resolve())]
        if self.mechanism == "userns":
            folders.append(str(Path.home().resolve()))
        return [folder for folder in folders if folder != "/"]

    def describe(self) -> str:
        if self.mechanism == "root":
            return (
                f"media sandbox: root (generators run as uid {self.uid} in their own PID,"
                " network, mount, IPC and UTS namespaces; read-only file system and a"
                " private tmpfs; no capabilities)"
            )
        if self.mechanism == "userns":
            return (
                "media sandbox: userns (an unprivileged user namespace with its own PID,"
                " network, mount, IPC and UTS namespaces; read-only file system and a"
                " private tmpfs; no capabilities; files readable by this user stay readable)"
            )
        return "media sandbox: none (a plain process with a scrubbed environment)"


def candidates() -> list[Isolation]:
    """The mechanisms this host might allow, strongest first."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    base = (unshare, *NAMESPACES, "--fork", "--kill-child", "--mount-proc", "--")
    found = []
    if os.geteuid() == 0:
        found.append(Isolation("root", base, SANDBOX_UID))
    found.append(Isolation("userns", (unshare, "--user", "--map-root-user", *base[1:])))
    return found


def resolve() -> Isolation:
    """The strongest mechanism that passes its probe; otherwise the fallback the settings
    allow, with its warning, or `SandboxUnavailable` naming the cause."""
    choice = settings.get("MEDIA_SANDBOX")
    if choice not in SANDBOX_CHOICES:
        raise settings.InvalidSetting(f"MEDIA_SANDBOX must be one of {', '.join(SANDBOX_CHOICES)}")
    failures = []
    for candidate in candidates():
        failure = probe(candidate)
        if failure is None:
            return candidate
        failures.append(f"{candidate.mechanism}: {failure}")
    cause = "; ".join(failures) or "the unshare command (util-linux) is not on PATH"
    if choice == "trusted":
        return Isolation(
            "none",
            warning=f"MEDIA_SANDBOX=trusted: generator code runs without isolation and can"
            f" reach this process's secrets and the network ({cause})",
        )
    if settings.is_production():
        raise SandboxUnavailable(
            f"generators refused: no sandbox isolates generator code on this host ({cause})."
            " Run as root, or allow unprivileged user namespaces, for full isolation;"
            " MEDIA_SANDBOX=trusted runs them without"
        )
    return Isolation(
        "none",
        warning=f"development fallback: generator code runs without isolation and can reach"
        f" this process's secrets and the network ({cause})",
    )


def probe(isolation: Isolation) -> str | None:
    """Why `isolation` does not hold on this host, or None when it does."""
    return _probe(isolation.command, isolation.uid, tuple(isolation.concealed()))


@functools.cache
def _probe(command: tuple[str, ...], uid: int | None, conceal: tuple[str, ...]) -> str | None:
    config = json.dumps({"probe": True, "confine": True, "uid": uid, "conceal": conceal})
    try:
        done = subprocess.run(
            [*command, sys.executable, "-I", str(WORKER_SCRIPT), config],
            capture_output=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd="/",
            timeout=PROBE_TIMEOUT_SECONDS,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not start a probe ({type(error).__name__})"
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return f"probe failed ({last[:200]})"
    try:
        seen = json.loads(done.stdout)
    except ValueError:
        return "probe gave no report"
    return _verdict(seen, uid)


def _verdict(seen: dict, uid: int | None) -> str | None:
    if seen.get("processes") != ["1"]:
        return "other processes are visible"
    if seen.get("interfaces") != ["lo"]:
        return "a network interface other than loopback is present"
    if seen.get("capabilities") != 0:
        return "capabilities were not dropped"
    if not seen.get("read_only_root"):
        return "the root file system is writable"
    if uid is not None and seen.get("uid") != uid:
        return f"the worker did not switch to uid {uid}"
    return None
