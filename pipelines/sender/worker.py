"""The receive → hold → limit → claim → send → record loop, run by several lanes in one
process, and the releaser thread beside them.

Each lane handles one received batch (≤ 10 payloads) at a time with a handful of database
round trips for the whole batch; its sends run concurrently on the Graph API client's
event loop, each at the time slot the shared throughput limit gave it, through the gate of
the open circuit breakers. The SQS message is deleted only after the row records the
result, so a crash at any point loses nothing: the payload comes back, and the row's status
says whether it may still be sent. A row held (its breaker is open, its campaign paused)
leaves the queue and waits in the database; the releaser queues it again once the hold is
lifted (`pipelines/sender/release.py`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.sender import release
from pipelines.sender.gate import BreakerView, Held, Trip, trip_of
from resources import breakers, consent, crash_points, safe_errors, sender_store, settings
from resources.breakers import Breaker
from resources.graph_errors import MARKETING_STOPPED, ErrorClass, classify
from resources.queue import Received, SQSResource
from resources.queue_message import MalformedPayload, Payload, parse
from resources.whatsapp import Outgoing, SentMessage, WhatsAppClient

log = logging.getLogger("waflow.sender")

# Errors the same statement would meet again: retrying them would stall a lane for ever.
NEVER_PASSES = (sa.exc.IntegrityError, sa.exc.DataError)
LIMIT_REACHED = "waiting: the organisation's messaging limit (recipients per 24 h) is reached"
# Each send leaves at its throughput slot rounded up to a tick of this clock, so the sends of
# a tick (8 at 80 messages/s) share one wake-up of the client's loop. A wake-up for every
# slot cost more CPU than the sends; rounding up never sends earlier than the limit allows.
TICK_SECONDS = 0.1
T = TypeVar("T")


@dataclass(frozen=True)
class SenderConfig:
    """Read by `settings.load(SenderConfig)` when the sender starts."""

    lanes: int = settings.setting("SENDER_LANES")
    visibility_seconds: int = settings.setting("SENDER_VISIBILITY_SECONDS")
    wait_seconds: int = settings.setting("SENDER_WAIT_SECONDS")
    max_attempts: int = settings.setting("SENDER_MAX_ATTEMPTS")
    retry_base_seconds: float = settings.setting("SENDER_RETRY_BASE_SECONDS")
    release_seconds: float = settings.setting("SENDER_RELEASE_SECONDS")
    probe_seconds: float = settings.setting("BREAKER_PROBE_SECONDS")
    requeue_after_seconds: float = settings.setting("SENDER_REQUEUE_AFTER_SECONDS")


@dataclass(frozen=True)
class Job:
    message: Received
    payload: Payload
    send_at: float = 0.0


class Worker:
    def __init__(
        self,
        engine: sa.Engine,
        sqs: SQSResource,
        client: WhatsAppClient,
        config: SenderConfig | None = None,
    ) -> None:
        self.engine = engine
        self.store = sender_store.Store(engine)
        self.view = BreakerView(engine)
        self.sqs = sqs
        self.client = client
        self.config = config or SenderConfig()
        self.stats: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._refusals: set[str] = set()
        # Each lane's received batch, kept hidden from the other lanes while it waits out
        # a database outage (see `_persist`).
        self._local = threading.local()

    def stop(self) -> None:
        """Stop receiving; lanes finish and record what is in flight, then return."""
        self._stopping.set()

    def run(self, drain: bool = False) -> Counter[str]:
        """Run until `stop()`, or with `drain` until the queue holds nothing more."""
        lanes = [
            threading.Thread(target=self._lane, args=(drain,), name=f"lane-{i}", daemon=True)
            for i in range(self.config.lanes)
        ]
        releaser = threading.Thread(target=self._releaser, name="release", daemon=True)
        self.client.start()
        for thread in (*lanes, releaser):
            thread.start()
        for lane in lanes:
            while lane.is_alive():
                lane.join(timeout=0.5)
        self._stopping.set()  # drained: the releaser stops too
        releaser.join()
        self.store.close()
        return self.stats

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _lane(self, drain: bool) -> None:
        while not self._stopping.is_set():
            try:
                messages = self.sqs.receive(
                    wait_seconds=self.config.wait_seconds,
                    visibility_seconds=self.config.visibility_seconds,
                )
            except (BotoCoreError, ClientError) as error:
                log.warning("cannot receive from SQS: %s", error)
                self._stopping.wait(2.0)
                continue
            if not messages:
                if drain and self.sqs.is_empty():
                    return
                continue
            if self._stopping.is_set():
                self._release(messages)
                return
            try:
                self._process(messages)
            except sa.exc.DBAPIError as error:
                log.warning(
                    "database unavailable before sending; payloads come back: %s",
                    safe_errors.describe(error),
                )
                self._stopping.wait(2.0)
            except (BotoCoreError, ClientError) as error:
                log.warning("SQS refused a request; the payloads come back: %s", error)
                self._stopping.wait(2.0)
            except Exception:
                # A bug must not end the lane: the payloads come back, and rows past
                # `pending` are never sent twice.
                log.exception("unexpected error in a batch; the payloads come back")
                self._stopping.wait(2.0)

    def _releaser(self) -> None:
        """Re-queue held rows whose hold was lifted, start due breaker probes, and re-queue
        once the rows whose payload has not been seen for `requeue_after_seconds`."""
        while not self._stopping.wait(self.config.release_seconds):
            try:
                self.view.refresh(force=True)  # the lanes see a closed breaker as closed
                released = release.release_due(self.engine, self.sqs)
                requeued = release.requeue_lost(
                    self.engine, self.sqs, self.config.requeue_after_seconds
                )
            except sa.exc.DBAPIError as error:
                log.warning("cannot re-queue held messages yet: %s", safe_errors.describe(error))
                continue
            except (BotoCoreError, ClientError) as error:
                log.warning("cannot re-queue held messages yet: %s", error)
                continue
            except Exception:
                log.exception("unexpected error while re-queueing held messages")
                continue
            if released:
                self._count("released_from_hold", released)
            if requeued:
                self._count("requeued_lost", requeued)
                log.warning("re-queued %d messages whose payload was no longer queued", requeued)

    def _process(self, messages: list[Received]) -> None:
        self._local.batch, self._local.hidden_at = messages, time.monotonic()
        jobs = []
        for message in messages:
            try:
                jobs.append(Job(message, parse(message.body)))
            except MalformedPayload as error:
                self._dead_letter(message, str(error), error.message_id)
        jobs = self._hold_blocked(jobs)
        jobs = self._admit(jobs)
        if not jobs:
            return
        jobs = self._schedule(jobs)
        first = min(job.send_at for job in jobs)
        if self._stopping.wait(max(0.0, first - time.monotonic())):
            self._release([job.message for job in jobs])
            return
        # The same token on each try: a claim whose answer the outage swallowed is found
        # again, rather than left `sending` with nothing sent.
        token, ids = str(uuid.uuid4()), [job.payload.message_id for job in jobs]
        claimed = self._persist(f"claim {len(ids)} rows", lambda: self.store.claim(ids, token))
        crash_points.reached("sender.claimed")
        sending, outcomes, done = [], [], []
        for job in jobs:
            # pop: a second copy of a payload in the same batch is a duplicate too
            row = claimed.pop(job.payload.message_id, None)
            if row is None:
                self._count("duplicates")  # already sent, sending, failed or held: never twice
                self._settle_probe(job.payload.message_id, None)
                done.append(job.message)
            elif row.verdict is not None:
                # Skipped (consent withdrawn) or held (campaign paused): nothing is sent.
                self._count("held_paused" if row.verdict == sender_store.PAUSED else "skipped")
                self._settle_probe(row.id, None)
                done.append(job.message)
            elif row.peer_phone != job.payload.to:
                outcomes.append(_failure(row.id, None, "payload recipient differs from the row's"))
                self._dead_letter(job.message, "payload recipient differs from the row's", None)
            elif not job.payload.business_initiated and not row.within_window:
                outcomes.append(
                    _failure(
                        row.id,
                        131047,
                        "Outside the 24-hour customer service window: not sent",
                        "free-form messages need a customer message within the last 24 hours; "
                        "use a template",
                    )
                )
                done.append(job.message)
            else:
                sending.append((job, row))
        results = self.client.send_many(
            [
                Outgoing(
                    job.payload.to,
                    job.payload.graph,
                    job.payload.phone_number_id,
                    send_at=job.send_at,
                    key=job.payload,
                )
                for job, _ in sending
            ],
            gate=self.view,
        )
        retry, dead, stopped = [], [], []
        for (job, row), result in zip(sending, results, strict=True):
            outcome, action = self._judge(job.payload, row, result)
            if outcome is not None:
                outcomes.append(outcome)
            if outcome is not None and outcome.error_code == MARKETING_STOPPED:
                stopped.append(row.id)
            if action == "retry":
                retry.append(
                    (job.message, self.config.retry_base_seconds * 2 ** (row.attempts - 1))
                )
            elif action == "dead":
                dead.append((job.message, outcome))
            else:
                done.append(job.message)
        self._record(outcomes)
        for (job, _), result in zip(sending, results, strict=True):
            self._settle_probe(job.payload.message_id, result)
        if stopped:
            self._persist("record marketing opt-outs", lambda: self._marketing_stopped(stopped))
        self.sqs.delete(done)
        for message, delay in retry:
            self.sqs.postpone([message], delay)
        for message, outcome in dead:
            self._dead_letter(
                message,
                f"failed after {self.config.max_attempts} attempts: "
                f"{outcome.error_code} {outcome.error_title}",
                None,
            )

    def _judge(
        self, payload: Payload, row: sender_store.Claimed, result: SentMessage | Exception
    ) -> tuple[sender_store.Outcome | None, str]:
        """What a send came to: the row's outcome and what to do with the SQS message."""
        if isinstance(result, SentMessage):
            self._count("sent")
            return sender_store.Outcome(row.id, "sent", wamid=result.wamid), "delete"
        if isinstance(result, Held):
            self._count("held_by_breaker")
            return self._hold(row.id, result.breaker, None, None), "delete"
        verdict = classify(result)
        if verdict.kind is ErrorClass.AMBIGUOUS:
            self._count("ambiguous")
            log.warning("message %s: %s; left in sending, not retried", row.id, verdict.title)
            return None, "delete"
        retries_left = row.attempts < self.config.max_attempts
        if verdict.kind is ErrorClass.RETRYABLE and retries_left:
            self._count("retried")
            return sender_store.Outcome(
                row.id, "retry", error_code=verdict.code, error_title=verdict.title
            ), "retry"
        if verdict.breaks is not None:
            # An account-level error (or a rate limit that outlived its retries): the row
            # waits for the scope's breaker to close instead of failing.
            self._count("held_by_breaker")
            trip = trip_of(payload, verdict.breaks, verdict.code, verdict.title)
            return self._hold(row.id, self._trip(trip), verdict.code, verdict.title), "delete"
        self._count("failed")
        outcome = _failure(row.id, verdict.code, verdict.title)
        return outcome, "dead" if verdict.kind is ErrorClass.RETRYABLE else "delete"

    def _hold(
        self, message_id: int, breaker: Breaker, code: int | None, title: str | None
    ) -> sender_store.Outcome:
        breaker = self._stored(breaker)
        return sender_store.Outcome(
            message_id,
            "hold",
            error_code=code if code is not None else breaker.error_code,
            error_title=title if title is not None else breaker.error_title,
            error_detail=_hold_reason(breaker),
            breaker_id=breaker.id,
        )

    def _hold_blocked(self, jobs: list[Job]) -> list[Job]:
        """Hold the rows of payloads an open breaker covers (their payloads leave the queue),
        except one that becomes the breaker's due probe; returns the rest."""
        self._persist("read the circuit breakers", self.view.refresh)
        held: dict[int, list[Job]] = {}
        breakers_by_id: dict[int, Breaker] = {}
        passing = []
        for job in jobs:
            breaker = self.view.blocking(job.payload)
            if breaker is None or self._becomes_probe(breaker, job.payload.message_id):
                passing.append(job)
                continue
            breaker = self._stored(breaker)
            breakers_by_id[breaker.id] = breaker
            held.setdefault(breaker.id, []).append(job)
        for breaker_id, group in held.items():
            ids = [job.payload.message_id for job in group]
            reason = _hold_reason(breakers_by_id[breaker_id])
            self._persist(
                f"hold {len(ids)} rows",
                lambda i=ids, r=reason, b=breaker_id: self.store.hold(i, "breaker", r, b),
            )
            self._count("held_by_breaker", len(group))
            self.sqs.delete([job.message for job in group])
        return passing

    def _becomes_probe(self, breaker: Breaker, message_id: int) -> bool:
        if breaker.id == 0 or breaker.closes_by != "probe" or breaker.probe_at is None:
            return False
        if breaker.probe_message_id is not None or breaker.probe_at > datetime.now(UTC):
            return False
        with self.engine.begin() as conn:
            won = breakers.claim_probe(conn, breaker.id, message_id)
        if won:
            self.view.probing(breaker, message_id)
            log.info("circuit breaker %s: message %s goes as its probe", breaker.id, message_id)
        return won

    def _settle_probe(self, message_id: int, result: SentMessage | Exception | None) -> None:
        """A probe's outcome: it went through (the breaker closes), met its breaker's error
        again (the next probe waits twice as long), or said nothing (another may go)."""
        breaker = self.view.probe_of(message_id)
        if breaker is None:
            return
        verdict = None if result is None or isinstance(result, SentMessage) else classify(result)
        with self.engine.begin() as conn:
            if isinstance(result, SentMessage) or (
                verdict is not None and verdict.kind is ErrorClass.PERMANENT
            ):
                breakers.close(conn, breaker.id, "probe", f"message {message_id} went through")
                log.warning(
                    "circuit breaker %s on %s closed: its probe went through",
                    breaker.id,
                    breaker.scope,
                )
            elif verdict is not None and verdict.breaks and verdict.breaks.scope == breaker.scope:
                breakers.probe_failed(conn, breaker.id, self.config.probe_seconds)
            else:
                breakers.probe_inconclusive(conn, breaker.id)
        self.view.refresh(force=True)

    def _trip(self, trip: Trip) -> Breaker:
        """Open (or find) the breaker in the database; logged once, when it opens."""

        def store_it() -> tuple[Breaker, bool]:
            with self.engine.begin() as conn:
                return breakers.trip(
                    conn,
                    trip.scope,
                    trip.scope_key,
                    trip.code,
                    trip.title,
                    trip.closes_by,
                    self.config.probe_seconds,
                )

        breaker, opened = self._persist(f"open a breaker on {trip.scope}", store_it)
        if opened:
            log.warning(
                "circuit breaker %s opened on %s %s by error %s (%s): its sends are held until %s",
                breaker.id,
                trip.scope,
                trip.scope_key,
                trip.code,
                trip.title,
                "a probe goes through" if trip.closes_by == "probe" else "an operator resets it",
            )
        self.view.learn(breaker)
        return breaker

    def _stored(self, breaker: Breaker) -> Breaker:
        """The breaker as the database has it: one this process saw open a moment ago (on
        the client's loop) has no id yet."""
        if breaker.id:
            return breaker
        return self._trip(
            Trip(
                breaker.scope,
                breaker.scope_key,
                breaker.error_code,
                breaker.error_title or "",
                breaker.closes_by,
            )
        )

    def _marketing_stopped(self, message_ids: list[int]) -> None:
        """Error 131050: the recipient stopped marketing messages; that is consent, kept."""
        with self.engine.begin() as conn:
            for message_id in message_ids:
                consent.marketing_stopped(conn, message_id)

    def _admit(self, jobs: list[Job]) -> list[Job]:
        """Hold template messages over their organisation's messaging limit: their rows
        wait in the database (not their payloads in the queue, which keeps a message at
        most four days) until the window has room or the limit is raised."""
        by_org: dict[str, list[Job]] = {}
        for job in jobs:
            if job.payload.business_initiated:
                by_org.setdefault(job.payload.organisation_id, []).append(job)
        held: set[int] = set()
        for organisation_id, group in by_org.items():
            try:
                admitted = self._persist(
                    "admit recipients",
                    lambda o=organisation_id, g=group: self.store.admit(
                        o, [j.payload.to for j in g]
                    ),
                )
            except sa.exc.DataError:
                for job in group:
                    self._dead_letter(job.message, "organizationId is not a UUID", None)
                    held.add(id(job))
                continue
            waiting = [job for job in group if job.payload.to not in admitted]
            if waiting:
                ids = [job.payload.message_id for job in waiting]
                self._persist(
                    f"hold {len(ids)} rows",
                    lambda i=ids: self.store.hold(i, "messaging_limit", LIMIT_REACHED),
                )
                self._count("held_by_limit", len(waiting))
                self.sqs.delete([job.message for job in waiting])
                held.update(id(job) for job in waiting)
        return [job for job in jobs if id(job) not in held]

    def _schedule(self, jobs: list[Job]) -> list[Job]:
        """Give each job its send time from the phone number's shared throughput limit, on
        the tick of its slot (`TICK_SECONDS`)."""
        by_phone: dict[str, list[Job]] = {}
        for job in jobs:
            by_phone.setdefault(job.payload.phone_number_id, []).append(job)
        scheduled = []
        for phone_number_id, group in by_phone.items():
            slots = self._persist(
                "reserve send slots",
                lambda p=phone_number_id, g=group: self.store.reserve_slots(p, len(g)),
            )
            start = time.monotonic() + slots.wait_seconds
            scheduled += [
                Job(job.message, job.payload, _tick(start + i * slots.spacing_seconds))
                for i, job in enumerate(group)
            ]
        return scheduled

    def _record(self, outcomes: list[sender_store.Outcome]) -> None:
        """Store the results: a sent message must get its row updated before its payload
        leaves the queue. A result the database refuses for good (a unique or check
        violation: it would refuse it again) fails its row with the reason instead of
        stalling the lane; the batch's other results are stored one by one."""
        try:
            self._persist(f"record {len(outcomes)} results", lambda: self.store.record(outcomes))
            return
        except NEVER_PASSES:
            pass
        for outcome in outcomes:
            try:
                self._persist("record a result", lambda o=outcome: self.store.record([o]))
            except NEVER_PASSES as error:
                reason = safe_errors.describe(error)
                if reason not in self._refusals:
                    self._refusals.add(reason)
                    log.error("the database refuses a send result for good: %s", reason)
                self._count("unrecordable")
                self._persist(
                    "fail an unrecordable row",
                    lambda o=outcome, r=reason: self.store.record(
                        [_failure(o.message_id, o.error_code, "result not recorded", r)]
                    ),
                )

    def _persist(self, what: str, statement: Callable[[], T]) -> T:
        """Run `statement` until the database takes it, waiting out an outage. An error
        that can never pass (`NEVER_PASSES`) is raised at once.

        Meanwhile the lane's batch stays hidden: were it to come back, other lanes would
        receive it again and again, and SQS would move it to the dead-letter queue after
        `SQS_MAX_RECEIVE_COUNT` receives while its rows stay `pending`."""
        delay = 0.5
        while True:
            try:
                return statement()
            except NEVER_PASSES:
                raise
            except sa.exc.DBAPIError as error:
                log.warning("cannot %s yet: %s", what, safe_errors.describe(error))
                time.sleep(min(delay, self.config.visibility_seconds / 3))
                delay = min(delay * 2, 5.0)
                self._keep_hidden()

    def _keep_hidden(self) -> None:
        """Renew the hiding of the lane's batch once a third of it has passed."""
        batch = getattr(self._local, "batch", None)
        since = time.monotonic() - getattr(self._local, "hidden_at", 0.0)
        if batch and since >= self.config.visibility_seconds / 3:
            self.sqs.change_visibility(batch, self.config.visibility_seconds)
            self._local.hidden_at = time.monotonic()

    def _release(self, messages: list[Received]) -> None:
        """Make received-but-unstarted payloads visible again at once (graceful stop)."""
        self.sqs.release(messages)
        self._count("released", len(messages))

    def _dead_letter(self, message: Received, reason: str, message_id: int | None) -> None:
        """Move a payload that will never be sent to the DLQ with the reason, and fail its row."""
        log.warning("payload %s to the DLQ: %s", message.message_id, reason)
        if message_id is not None:
            self._record([_failure(message_id, None, "Malformed payload", reason)])
        self.sqs.dead_letter(message, reason)
        self._count("dead_lettered")


def _tick(slot: float) -> float:
    return math.ceil(slot / TICK_SECONDS) * TICK_SECONDS


def _hold_reason(breaker: Breaker) -> str:
    return (
        f"held: circuit breaker {breaker.id} on {breaker.scope} open"
        f" (error {breaker.error_code}: {breaker.error_title})"
    )


def _failure(
    message_id: int, code: int | None, title: str, detail: str | None = None
) -> sender_store.Outcome:
    return sender_store.Outcome(
        message_id, "failed", error_code=code, error_title=title, error_detail=detail
    )
