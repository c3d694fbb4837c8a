"""Media generation end to end (sandbox pool, upload to the local S3 server, database updates)
against the same-run baseline: a plain loop calling the same `generate_asset` for the same
members in one process, writing to local disk, timed before and after the run (their mean);
and the run's peak memory over 10,000 members.

The memory is that of a process doing the run and nothing else, as a Dagster run process
does, plus its sandbox workers: not the benchmark's own process, which has imported every
benchmark and run the ones before.

The S3 server is the benchmarks' moto server (`tests/bench/aws_server.py`), in a process of
its own and keeping connections alive, as S3 does; its CPU and memory are not the run's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from pipelines.dev.demo import DEMO_GENERATOR
from pipelines.dev.local_stack import local_stack
from resources.postgres import PostgresResource
from tests.bench import Figure, benchmark
from tests.bench.aws_server import aws_server
from tests.bench.media_run import materialize_campaign
from tests.media_campaigns import create_campaign, member, versioned

MEMBERS = 1_000
RSS_MEMBERS = 10_000


def baseline_members_per_s(count: int) -> float:
    """The plain loop over the same members (`create_campaign`'s) as the pipeline's run."""
    spec = importlib.util.spec_from_file_location("demo_offer", DEMO_GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    members = [member(i) for i in range(count)]
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        for i, m in enumerate(members):
            temp_dir = Path(root) / str(i)
            temp_dir.mkdir()
            module.generate_asset(m.attributes, m.name, m.msisdn, temp_dir)
        return count / (time.perf_counter() - started)


def materialize(engine, source: str, members: int) -> float:
    """Seconds to materialise `campaign_media` for a new campaign of `members`."""
    campaign_id, _ = create_campaign(engine, members, source)
    return materialize_campaign(str(campaign_id), members)


def peak_rss_of_a_run(engine, source: str, members: int) -> float:
    """Peak MB of a process that materialises a new campaign's media, with its workers."""
    campaign_id, _ = create_campaign(engine, members, source)
    with PeakRSS() as rss:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.media_run", str(campaign_id), str(members)],
            stdout=subprocess.PIPE,
            text=True,
        )
        rss.watch(child.pid)
        out, _ = child.communicate()
    assert child.returncode == 0, out
    json.loads(out.strip().splitlines()[-1])
    return rss.peak / 2**20


class PeakRSS:
    """Samples the resident memory of a process and its children (the sandbox workers)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, pid: int) -> None:
        self.pid = pid

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            if self.pid is None:
                continue
            try:
                run = psutil.Process(self.pid)
                processes = [run, *run.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for process in processes:
                try:
                    if (
                        process.name() != "postgres"
                        and "pipelines.dev.local_aws" not in process.cmdline()
                    ):
                        total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)


@benchmark("media")
def media() -> list[Figure]:
    for name in ("DATABASE_URL", "AWS_ENDPOINT_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        os.environ.pop(name, None)
    os.environ.setdefault("MEDIA_RETRY_BACKOFF_SECONDS", "0.1")
    with (
        tempfile.TemporaryDirectory() as state,
        aws_server(),
        local_stack(Path(state)),
    ):
        engine = PostgresResource.from_settings().engine
        # Before and after: the mean cancels a drift of the machine's speed in between.
        before = baseline_members_per_s(MEMBERS)
        elapsed = materialize(engine, DEMO_GENERATOR.read_text(), MEMBERS)
        baseline = (before + baseline_members_per_s(MEMBERS)) / 2
        peak_mb = peak_rss_of_a_run(engine, versioned(1), RSS_MEMBERS)
        engine.dispose()
    return [
        Figure(
            "media_members_per_s",
            round(MEMBERS / elapsed, 1),
            "members/s",
            "media_plain_loop_members_per_s",
            round(baseline, 1),
            ">= 1.0x baseline (1,000 members, demo generator)",
        ),
        Figure(
            "media_peak_rss_mb",
            round(peak_mb, 1),
            "MB",
            target="< 400 MB (10,000 members, light JSON generator; run + sandbox workers)",
        ),
    ]
