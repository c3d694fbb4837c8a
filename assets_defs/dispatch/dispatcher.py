"""One campaign run, from the audience table to the queue, exactly once and in constant memory.

Members are read in keyset pages. For each page one transaction stores a `pending` message row
per valid member (unique per run and member; written once, its `queued_at` the moment it is
handed to the queue) and marks invalid members `failed` and opted-out ones `skipped` (by the
consent rules of the template's category); the new rows then go to SQS, several batches in
flight, and one statement per group of SQS's answers moves their members to `ready_to_send`
with this run as their `dispatch_run_id`: that is the record that SQS has them. A run that
was killed resumes by first sending its pending rows whose member does not have it yet; a FIFO
queue's deduplication id (run + member) covers rows sent just before the kill, and the
sender refuses a row that is no longer `pending`.

While the campaign's media are still being made, the run sends the members whose media are
ready, then waits for more: the media runs `NOTIFY` as they record members, and the run
looks again at least every `DISPATCH_MEDIA_POLL_SECONDS`. Once the media are finished (the
campaign left `asset_generation`), one last pass takes every member left and the run ends.

Between pages the run looks at its campaign: paused, cancelled or failed (its media failure
threshold crossed), it stops there (`Halted`). What it stored and did not queue stays pending
for the run that resumes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import audience, consent, crash_points, messages
from resources.campaign_runs import GENERATING
from resources.campaigns import current_status
from resources.media_ready import Listener
from resources.queue import BATCH_SIZE, BatchOutcome, Outgoing, SQSResource, pack
from resources.queue_message import (
    CampaignSpec,
    InvalidPayload,
    MediaUrl,
    Prepared,
    Recipient,
    body,
    prepare,
    with_message_id,
)

PAGE_SIZE = 1000
# Batches waiting for a sending thread: two pages' worth, so that SQS is kept busy while the
# main thread prepares and stores the next page.
AHEAD_BATCHES = 2 * PAGE_SIZE // BATCH_SIZE
# SQS's answers are written in groups of about this many messages: one transaction per batch
# costs more than the sending. A row sent but not yet marked when a run dies is sent again by
# the retry, and dropped by the FIFO deduplication or by the sender's `pending` check.
RECORD_EVERY = 200
# Members a run may still send to: not yet decided, or sent by an earlier run of a recurring
# campaign.
CANDIDATE_STATUSES = ("pending", "asset_generated", "ready_to_send")
# While media are being made, `pending` members are waiting for theirs.
READY_STATUSES = ("asset_generated", "ready_to_send")
# Campaign statuses in which members are still getting their media (`approved`: resumed
# after a pause, until its media run starts again).
MAKING_MEDIA = (GENERATING, "approved")
STOPPING = ("paused", "cancelled", "failed")
# The media runs signal every few members, and each look scans the campaign's audience: a
# look at most this often gathers the members of many signals (the sender takes 80 a second).
LOOK_EVERY_SECONDS = 1.0


class Halted(Exception):
    """The campaign was paused, cancelled or failed while its run was being dispatched."""

    def __init__(self, status: str) -> None:
        super().__init__(f"campaign {status}: dispatch stopped")
        self.status = status


@dataclass(frozen=True)
class RunCounts:
    queued: int
    failed: int
    skipped: int
    eligible: int
    # Already sent by the sender when the run ended (it sends while the run queues).
    sent: int = 0


@dataclass
class AttemptStats:
    batches: int = 0
    sent: int = 0
    # Time spent dispatching, and apart from it the time spent waiting for media.
    seconds: float = 0.0
    media_wait_seconds: float = 0.0
    started_during_media: bool = False


class Dispatch:
    def __init__(
        self,
        engine: sa.Engine,
        sqs: SQSResource,
        spec: CampaignSpec,
        run_id: int,
        media_url: MediaUrl,
        *,
        concurrency: int = 8,
        retry_seconds: float = 120.0,
        media_poll_seconds: float = 5.0,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.engine = engine
        self.sqs = sqs
        self.spec = spec
        self.campaign_id = UUID(spec.id)
        self.run_id = run_id
        self.media_url = media_url
        self.concurrency = concurrency
        self.retry_seconds = retry_seconds
        self.media_poll_seconds = media_poll_seconds
        self.log = log
        self.stats = AttemptStats()
        self._in_flight: set[Future] = set()
        self._answered: list[BatchOutcome] = []

    def run(self) -> AttemptStats:
        started = time.perf_counter()
        with (
            Listener(self.engine, self.campaign_id) as media_ready,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="sqs-send") as pool,
        ):
            try:
                for rows in self._unqueued_pages():
                    self._submit(pool, rows)
                self.stats.started_during_media = self._check_campaign() in MAKING_MEDIA
                while True:
                    making_media = self._check_campaign() in MAKING_MEDIA
                    for page in self._candidate_pages(making_media):
                        self._check_campaign()
                        self._submit(pool, self._prepare(page))
                    if not making_media:
                        break
                    self._settle(0)
                    waiting = time.perf_counter()
                    media_ready.wait(self.media_poll_seconds)
                    time.sleep(max(0.0, waiting + LOOK_EVERY_SECONDS - time.perf_counter()))
                    self.stats.media_wait_seconds += time.perf_counter() - waiting
                self._settle(0)
            finally:
                # Whatever SQS accepted is recorded even when the run stops on an error.
                self._settle(0, raise_errors=False)
        self.stats.seconds = time.perf_counter() - started - self.stats.media_wait_seconds
        return self.stats

    def _check_campaign(self) -> str:
        """The campaign's status; `Halted` when it stopped."""
        with self.engine.connect() as conn:
            status = current_status(conn, self.campaign_id)
        if status in STOPPING:
            raise Halted(status)
        return status

    def _unqueued_pages(self) -> Iterator[list[Outgoing]]:
        """Rows an earlier attempt stored but did not get onto the queue (held rows are the
        sender's to re-queue)."""

        def page(conn: sa.Connection, after: int) -> list[sa.Row]:
            return messages.unqueued_page(conn, self.run_id, after, PAGE_SIZE)

        for rows in self._pages(page, after=0):
            self.log(f"resuming {len(rows)} messages stored by an earlier attempt")
            yield [
                Outgoing(mid, member, self.run_id, to, with_message_id(body(payload), mid))
                for mid, member, to, payload in rows
            ]

    def _candidate_pages(self, making_media: bool) -> Iterator[list[Recipient]]:
        """Members not yet decided by this run nor stored for it; while media are being made,
        only those whose media are ready."""
        statuses = READY_STATUSES if making_media else CANDIDATE_STATUSES

        def page(conn: sa.Connection, after: str) -> list[sa.Row]:
            return audience.candidate_page(
                conn, self.campaign_id, self.run_id, statuses, after, PAGE_SIZE
            )

        for rows in self._pages(page, after=audience.FIRST_MEMBER):
            yield [
                Recipient(
                    member_id=r[0],
                    msisdn=r[1],
                    name=r[2],
                    attributes=r[3],
                    asset_keys=r[4],
                    contact_id=r[5],
                    contact_name=r[6],
                    contact_attributes=r[7] or {},
                    opted_out=r[8],
                    marketing_opted_out=r[9],
                )
                for r in rows
            ]

    def _pages(
        self, page: Callable[[sa.Connection, Any], list[sa.Row]], after: Any
    ) -> Iterator[list[sa.Row]]:
        """`page`'s rows in keyset pages, ordered by their first column (each page starts
        after the last one's), each page read on a connection of its own."""
        while True:
            with self.engine.connect() as conn:
                rows = page(conn, after)
            if not rows:
                return
            after = rows[-1][0]
            yield rows

    def _prepare(self, page: list[Recipient]) -> list[Outgoing]:
        """Store the page's decisions in one transaction; returns the new rows to queue."""
        valid: list[Prepared] = []
        failed: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for recipient in page:
            refusal = consent.blocks(
                self.spec.category, recipient.opted_out, recipient.marketing_opted_out
            )
            if refusal:
                skipped[recipient.member_id] = refusal
                continue
            try:
                valid.append(prepare(self.spec, recipient, self.media_url))
            except InvalidPayload as error:
                failed[recipient.member_id] = str(error)
        with self.engine.begin() as conn:
            inserted = self._insert_messages(conn, valid)
            for item in valid:
                if item.recipient.member_id not in inserted:
                    skipped[item.recipient.member_id] = (
                        f"another member of this campaign has the number {item.to}"
                    )
            self._decide(conn, "failed", failed)
            self._decide(conn, "skipped", skipped)
        return [
            Outgoing(
                inserted[item.recipient.member_id],
                item.recipient.member_id,
                self.run_id,
                item.to,
                with_message_id(item.serialized, inserted[item.recipient.member_id]),
            )
            for item in valid
            if item.recipient.member_id in inserted
        ]

    def _insert_messages(self, conn: sa.Connection, valid: list[Prepared]) -> dict[str, int]:
        """Insert the pending rows, queued from now on (nothing writes them again on the way
        to SQS); a row that already exists (same run and member, or same run and recipient)
        is left alone. Returns member id → message id of the new rows."""
        if not valid:
            return {}
        return messages.insert_pending(conn, self.spec, self.run_id, valid, PAGE_SIZE)

    def _decide(self, conn: sa.Connection, status: str, reasons: dict[str, str]) -> None:
        """Move members to `failed`/`skipped` with their reasons, along the status machine."""
        if not reasons:
            return
        audience.decide(conn, self.run_id, status, reasons)

    def _submit(self, pool: ThreadPoolExecutor, rows: list[Outgoing]) -> None:
        for batch in pack(rows):
            self._settle(AHEAD_BATCHES)
            self._in_flight.add(pool.submit(self.sqs.send, batch, self.retry_seconds))

    def _settle(self, keep: int, raise_errors: bool = True) -> None:
        """Wait until at most `keep` batches are in flight, recording SQS's answers (all of
        them once nothing is left in flight)."""
        while len(self._in_flight) > keep:
            done, self._in_flight = wait(self._in_flight, return_when=FIRST_COMPLETED)
            if not raise_errors:
                # On the way out: batches not started stay pending for the next attempt;
                # those being sent finish, so that their answers are recorded too.
                for future in self._in_flight:
                    future.cancel()
                wait(self._in_flight)
                done |= {f for f in self._in_flight if not f.cancelled()}
                self._in_flight = set()
            self._answered += [f.result() for f in done if f.exception() is None]
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors or len(self._answered) * BATCH_SIZE >= RECORD_EVERY:
                self._flush()
            if errors and raise_errors:
                raise errors[0]
        if keep == 0:
            self._flush()

    def _flush(self) -> None:
        self._record(self._answered)
        self._answered = []

    def _record(self, outcomes: list[BatchOutcome]) -> None:
        sent = [m for o in outcomes for m in o.sent]
        failed = [(m, reason) for o in outcomes for m, reason in o.failed]
        self.stats.batches += sum(o.calls for o in outcomes)
        self.stats.sent += len(sent)
        if not sent and not failed:
            return
        crash_points.reached("dispatch.sqs_accepted")
        with self.engine.begin() as conn:
            if sent:
                audience.mark_queued(conn, self.run_id, [m.member_id for m in sent])
            if failed:
                messages.fail_not_queued(conn, [(m.message_id, reason) for m, reason in failed])
                self._decide(conn, "failed", {m.member_id: reason for m, reason in failed})


def run_counts(conn: sa.Connection, campaign_id: UUID, run_id: int) -> RunCounts:
    """The run's outcome read from the tables (not from the attempt's memory), so a re-run
    reports the whole run: every eligible member is queued, failed or skipped exactly once."""
    members = audience.run_members(conn, campaign_id, run_id, CANDIDATE_STATUSES)
    queued, sent = messages.run_queued_and_sent(conn, run_id)
    return RunCounts(
        queued=queued,
        failed=members.failed,
        skipped=members.skipped,
        eligible=members.eligible,
        sent=sent,
    )
