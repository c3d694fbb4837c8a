import os
import signal
import subprocess
import sys
import time

import psutil

from pipelines.dev.local_stack import free_port
from pipelines.dev.supervisor import Service, supervise


def http_server(name: str) -> Service:
    port = free_port()
    return Service(
        name,
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        "127.0.0.1",
        port,
    )


def test_when_one_service_dies_the_others_are_stopped():
    server = http_server("web")
    dying = Service("short-lived", [sys.executable, "-c", "import time; time.sleep(2)"])
    before = set(psutil.Process().children(recursive=True))
    assert supervise([server, dying], env={}, ready_timeout=30) == 1
    leftovers = [
        p for p in psutil.Process().children(recursive=True) if p not in before and p.is_running()
    ]
    assert leftovers == []


SCRIPT = """
import sys
from pipelines.dev.supervisor import Service, supervise
port = int(sys.argv[1])
sys.exit(supervise([Service("web", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            "127.0.0.1", port)], env={}))
"""


def test_ctrl_c_stops_every_service_and_exits_cleanly(repo_root):
    port = free_port()
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(port)], cwd=repo_root, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    for line in supervisor.stdout:
        if "Ctrl-C" in line or time.monotonic() > deadline:
            break
    children = psutil.Process(supervisor.pid).children(recursive=True)
    assert children
    os.kill(supervisor.pid, signal.SIGINT)
    assert supervisor.wait(timeout=30) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


LABELLED = """
import sys
from pipelines.dev.supervisor import Service, supervise
talker = [sys.executable, "-c", "import time; print('hello from a service'); time.sleep(600)"]
sys.exit(supervise([Service("talker", talker)], env={}))
"""


def test_every_line_a_service_prints_is_labelled_with_its_name(repo_root):
    supervisor = subprocess.Popen(
        [sys.executable, "-c", LABELLED], cwd=repo_root, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        for line in supervisor.stdout:
            lines.append(line.rstrip("\n"))
            if "hello" in line or time.monotonic() > deadline:
                break
        assert f"{'talker':<14} | hello from a service" in lines
    finally:
        os.kill(supervisor.pid, signal.SIGINT)
        assert supervisor.wait(timeout=30) == 0
