"""`X-Hub-Signature-256`: Meta signs every webhook body with the app secret (HMAC-SHA256)."""

from __future__ import annotations

import hashlib
import hmac

from resources import settings

# Development only: without WHATSAPP_APP_SECRET the app accepts bodies signed with this
# well-known secret, so local tools and the demo can post webhooks. Production refuses to
# start without a real secret (REQUIRED_IN_PRODUCTION).
DEV_APP_SECRET = "dev-app-secret"


def app_secret() -> str:
    if settings.is_production():
        return settings.require("WHATSAPP_APP_SECRET")
    return settings.get("WHATSAPP_APP_SECRET") or DEV_APP_SECRET


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_valid(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time comparison, so the answer time says nothing about the expected value."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())
