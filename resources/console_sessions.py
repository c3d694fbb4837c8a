"""Operator console sessions: opened with an operator token, kept in Postgres so that any
app instance behind the load balancer knows them.

The browser holds a random secret in an HttpOnly cookie; only its SHA-256 is stored, beside
the token's SHA-256 and the CSRF token of the session's forms. A session is good until it
expires (`CONSOLE_SESSION_HOURS`), is signed out, or its token stops working: a revoked
organisation token, or a changed `ADMIN_API_TOKEN`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from resources import settings


@dataclass(frozen=True)
class Session:
    organisation_id: str | None  # None: the platform admin
    token_id: int | None
    operator: str
    csrf: str

    def csrf_matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def open_session(
    engine: sa.Engine, token: str, organisation_id: str | None, token_id: int | None, operator: str
) -> str:
    """Store a new session for a token already checked; the cookie's secret."""
    secret = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
        )
        conn.execute(
            sa.text(
                "INSERT INTO console_sessions (secret_sha256, organisation_id, token_id,"
                " token_sha256, operator, csrf, expires_at)"
                " VALUES (:s, :o, :t, :d, :op, :csrf, now() + make_interval(secs => :secs))"
            ),
            {
                "s": _digest(secret),
                "o": organisation_id,
                "t": token_id,
                "d": _digest(token),
                "op": operator,
                "csrf": secrets.token_urlsafe(32),
                "secs": settings.number("CONSOLE_SESSION_HOURS") * 3600,
            },
        )
    return secret


def find(engine: sa.Engine, secret: str) -> Session | None:
    """The live session of this cookie secret, or None (unknown, expired, token gone)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT s.organisation_id::text, s.token_id, s.operator, s.csrf, s.token_sha256"
                " FROM console_sessions s LEFT JOIN api_tokens t ON t.id = s.token_id"
                " WHERE s.secret_sha256 = :s AND s.expires_at > now()"
                " AND (s.token_id IS NULL OR (t.revoked_at IS NULL"
                "      AND t.token_sha256 = s.token_sha256))"
            ),
            {"s": _digest(secret)},
        ).one_or_none()
    if row is None:
        return None
    if row.token_id is None:
        admin = _digest(settings.require("ADMIN_API_TOKEN"))
        if not hmac.compare_digest(bytes(row.token_sha256), admin):
            return None
    return Session(row.organisation_id, row.token_id, row.operator, row.csrf)


def close(engine: sa.Engine, secret: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM console_sessions WHERE secret_sha256 = :s"),
            {"s": _digest(secret)},
        )
