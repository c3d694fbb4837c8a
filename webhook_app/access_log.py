"""uvicorn's access log without query strings.

Queries carry what logs must not hold: Meta's verification handshake sends the verify token
(`GET /webhook?hub.verify_token=…`), and contacts are looked up by phone number
(`?phone=+…`). The path stays, so each request is still logged.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class WithoutQuery(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs (client, method, path with query, HTTP version, status).
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


def install() -> None:
    """Filter the access log of this process (once, however often the app starts)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, WithoutQuery) for f in logger.filters):
        logger.addFilter(WithoutQuery())
