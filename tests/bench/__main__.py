"""Run the benchmarks (all, or those named) and write `.bench/results.json`."""

from __future__ import annotations

import importlib
import json
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from tests.bench import BENCHMARKS, Figure

RESULTS = Path(".bench/results.json")


def _load_modules() -> None:
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        importlib.import_module(f"tests.bench.{path.stem}")


def _write(figures: list[Figure]) -> dict:
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"figures": {}}
    for figure in figures:
        existing["figures"][figure.name] = {
            **asdict(figure),
            "ratio": figure.ratio,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return existing


def _table(results: dict) -> str:
    rows = [("figure", "value", "unit", "baseline", "ratio", "target")]
    for name, f in sorted(results["figures"].items()):
        baseline = (
            f"{f['baseline_value']:g} ({f['baseline_name']})"
            if f["baseline_value"] is not None
            else "-"
        )
        rows.append(
            (
                name,
                f"{f['value']:g}",
                f["unit"],
                baseline,
                str(f["ratio"] or "-"),
                f["target"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def main(names: list[str]) -> int:
    warnings.filterwarnings("ignore")
    _load_modules()
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(sorted(BENCHMARKS))}",
            file=sys.stderr,
        )
        return 2
    figures: list[Figure] = []
    for name in names or sorted(BENCHMARKS):
        print(f"running {name}…", flush=True)
        figures.extend(BENCHMARKS[name]())
    print(_table(_write(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
