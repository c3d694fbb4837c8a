"""`definitions_import_rss_mb`: the resident memory of a fresh interpreter after
`import pipelines.definitions` and building its definitions (`defs()`), what every Dagster
run process and the code server pay before doing anything. Reported on its own: the dispatch and media memory figures include
it. 148 MB when both memory targets were first met; 158 MB before the imports were trimmed."""

from __future__ import annotations

import subprocess
import sys

from tests.bench import Figure, benchmark

SCRIPT = """
import pipelines.definitions
pipelines.definitions.defs()
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""
ROUNDS = 3


@benchmark("imports")
def imports() -> list[Figure]:
    """The lowest of a few fresh interpreters (a page more or less from one run to the next)."""
    values = [
        float(
            subprocess.run(
                [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
            ).stdout.split()[-1]
        )
        for _ in range(ROUNDS)
    ]
    print(f"import pipelines.definitions: {[round(v, 1) for v in values]} MB")
    return [
        Figure(
            "definitions_import_rss_mb",
            round(min(values), 1),
            "MB",
            target="reported (the dispatch and media memory figures include it)",
        )
    ]
