"""Runs a sender worker from the environment until SIGTERM/SIGINT (or until the queue is
drained), as `waflow sender` and the demo do.

At start-up it reads each phone number's status from the Graph API (throughput, which sets
its messages per second, quality rating, name status, the portfolio's messaging limit):
skipped in dev mode, and a read that fails is logged and does not stop the sender."""

from __future__ import annotations

import logging
import signal
from collections import Counter

from pipelines.sender.worker import SenderConfig, Worker
from resources import account, logs, settings
from resources.postgres import PostgresResource
from resources.queue import SQSResource
from resources.whatsapp import WhatsAppClient, WhatsAppResource

REQUIRED_IN_PRODUCTION = ("DATABASE_URL", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID")


def run(drain: bool = False, install_signals: bool = True) -> Counter[str]:
    settings.check_production(REQUIRED_IN_PRODUCTION, "sender")
    config = settings.load(SenderConfig)
    engine = PostgresResource.from_settings(pool_size=config.lanes + 2).engine
    sqs = SQSResource.from_settings()
    client = WhatsAppResource.from_settings(
        timeout_seconds=30.0, max_connections=config.lanes * 10
    ).client
    worker = Worker(engine, sqs, client, config)
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
    logs.configure("sender")
    logging.getLogger("waflow.sender").info(
        "sending from %s%s",
        sqs.queue_name,
        " (dev mode: nothing leaves)" if client.dev_mode else "",
    )
    try:
        _read_numbers(engine, client)
        return worker.run(drain=drain)
    finally:
        client.close()
        engine.dispose()


def _read_numbers(engine, client: WhatsAppClient) -> None:
    """Each number's status from the Graph API, before the first send (dev mode: nothing
    can be read). Whatever goes wrong is logged: the sender starts all the same, with the
    rates it had."""
    log = logging.getLogger("waflow.sender")
    try:
        results = account.refresh_numbers(engine, client)
    except Exception:
        log.exception("phone number status not read at start-up; sending with the stored rates")
        return
    failed = [r["phone_number_id"] for r in results if "error" in r]
    if results:
        log.info(
            "phone number status read for %d number(s)%s",
            len(results) - len(failed),
            f"; not read for {', '.join(failed)} (see above)" if failed else "",
        )
