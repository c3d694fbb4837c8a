"""Tenants: organisation API tokens, and which organisation a campaign or template belongs to.

Each organisation's token acts for that organisation only; the platform admin
(`ADMIN_API_TOKEN`) creates, lists and revokes them here, through the API or the CLI. Only
a token's SHA-256 is stored: the token itself is in the answer that creates it and nowhere
else, so a copy of the database gives no way in. An organisation's campaigns and templates
never move to another organisation, so the owner read here stays true for the request
that reads it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import sqlalchemy as sa

from resources.errors import InvalidInput, NotFound

TOKEN_PREFIX = "waf_"
_HINT_LENGTH = len(TOKEN_PREFIX) + 6
_COLUMNS = "id, organisation_id::text, name, hint, created_by, created_at, revoked_at, revoked_by"


@dataclass(frozen=True)
class TokenOwner:
    token_id: int
    organisation_id: str


def _uuid(value: Any) -> str:
    try:
        return str(UUID(str(value)))
    except ValueError:
        raise InvalidInput([{"field": "organisation_id", "error": "must be a UUID"}]) from None


def _jsonable(row: sa.RowMapping) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _text(data: dict[str, Any], name: str, default: str | None, errors: list) -> str | None:
    value = data.get(name, default)
    if not isinstance(value, str) or not 0 < len(value.strip()) <= 200:
        errors.append({"field": name, "error": "must be text of 1 to 200 characters"})
        return None
    return value.strip()


def _organisation_exists(conn: sa.Connection, organisation_id: str) -> None:
    if not conn.execute(
        sa.text("SELECT 1 FROM organisations WHERE id = :o"), {"o": organisation_id}
    ).scalar():
        raise NotFound(f"organisation {organisation_id} does not exist")


def create_token(engine: sa.Engine, organisation_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A new token for the organisation (`name`: what it is for; `by`: who asks). The
    answer's `token` is the only copy there will ever be."""
    organisation_id = _uuid(organisation_id)
    errors: list[dict[str, Any]] = []
    name = _text(data, "name", None, errors)
    by = _text(data, "by", "platform admin", errors)
    if errors:
        raise InvalidInput(errors)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        _organisation_exists(conn, organisation_id)
        row = (
            conn.execute(
                sa.text(
                    "INSERT INTO api_tokens (organisation_id, name, token_sha256, hint, created_by)"
                    f" VALUES (:o, :n, :d, :h, :by) RETURNING {_COLUMNS}"
                ),
                {
                    "o": organisation_id,
                    "n": name,
                    "d": _digest(token),
                    "h": token[:_HINT_LENGTH],
                    "by": by,
                },
            )
            .mappings()
            .one()
        )
    return {**_jsonable(row), "token": token}


def list_tokens(engine: sa.Engine, organisation_id: str) -> list[dict[str, Any]]:
    """The organisation's tokens, revoked ones too, oldest first (never the token itself)."""
    organisation_id = _uuid(organisation_id)
    with engine.connect() as conn:
        _organisation_exists(conn, organisation_id)
        rows = conn.execute(
            sa.text(f"SELECT {_COLUMNS} FROM api_tokens WHERE organisation_id = :o ORDER BY id"),
            {"o": organisation_id},
        ).mappings()
        return [_jsonable(r) for r in rows]


def revoke_token(
    engine: sa.Engine, organisation_id: str, token_id: int, data: dict[str, Any]
) -> dict[str, Any]:
    """Revoke one of the organisation's tokens (`by`: who asks); it stops working at once.
    Revoking a revoked token changes nothing and answers it as it is."""
    organisation_id = _uuid(organisation_id)
    errors: list[dict[str, Any]] = []
    by = _text(data, "by", "platform admin", errors)
    if errors:
        raise InvalidInput(errors)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE api_tokens SET revoked_at = now(), revoked_by = :by"
                " WHERE id = :t AND organisation_id = :o AND revoked_at IS NULL"
            ),
            {"t": token_id, "o": organisation_id, "by": by},
        )
        row = (
            conn.execute(
                sa.text(
                    f"SELECT {_COLUMNS} FROM api_tokens WHERE id = :t AND organisation_id = :o"
                ),
                {"t": token_id, "o": organisation_id},
            )
            .mappings()
            .one_or_none()
        )
    if row is None:
        raise NotFound(f"token {token_id} does not exist in organisation {organisation_id}")
    return _jsonable(row)


def token_owner(engine: sa.Engine, token: str) -> TokenOwner | None:
    """The organisation a live (not revoked) token acts for, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT id, organisation_id::text FROM api_tokens"
                " WHERE token_sha256 = :d AND revoked_at IS NULL"
            ),
            {"d": _digest(token)},
        ).one_or_none()
    return TokenOwner(*row) if row else None


def organisation_of(
    engine: sa.Engine, kind: Literal["campaign", "template"], object_id: Any
) -> str | None:
    """The organisation that owns the campaign (UUID) or template (id), None if none does."""
    sql = {
        "campaign": "SELECT organisation_id::text FROM campaigns WHERE id = CAST(:i AS uuid)",
        "template": "SELECT organisation_id::text FROM templates WHERE id = CAST(:i AS bigint)",
    }[kind]
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), {"i": str(object_id)}).scalar_one_or_none()
