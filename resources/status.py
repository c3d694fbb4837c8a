"""The status machines that are the contract between the parts (ARCHITECTURE.md).

Both the Dagster side and the webhook app move rows only through these rules; the
database's check constraints hold the set of statuses, these hold the moves.
"""

from __future__ import annotations

CAMPAIGN_MOVES: dict[str, frozenset[str]] = {
    "draft": frozenset({"approved", "cancelled"}),
    "approved": frozenset({"asset_generation", "asset_generated", "paused", "cancelled", "failed"}),
    "asset_generation": frozenset({"asset_generated", "failed", "paused", "cancelled"}),
    "asset_generated": frozenset({"ready_to_launch", "paused", "cancelled"}),
    "ready_to_launch": frozenset({"running", "paused", "cancelled", "failed"}),
    "running": frozenset({"completed", "paused", "cancelled", "failed"}),
    "paused": frozenset({"approved", "asset_generated", "ready_to_launch", "running", "cancelled"}),
    "failed": frozenset({"approved", "cancelled"}),
    # Retrying a completed campaign's failed rows reopens it until they are settled.
    "completed": frozenset({"running"}),
    "cancelled": frozenset(),
}

MEMBER_MOVES: dict[str, frozenset[str]] = {
    "pending": frozenset(
        {"asset_generating", "asset_generated", "ready_to_send", "failed", "skipped"}
    ),
    "asset_generating": frozenset({"asset_generated", "failed", "pending"}),
    "asset_generated": frozenset({"ready_to_send", "failed", "skipped"}),
    "ready_to_send": frozenset({"failed", "skipped"}),
    "failed": frozenset({"pending"}),
    "skipped": frozenset({"pending"}),
}

# Receipts arrive out of order and more than once: a message only moves forwards, and
# `failed`, `skipped` (consent withdrawn before sending) and `cancelled` (campaign cancelled
# before sending) are final. `received` is the single status of inbound messages.
MESSAGE_RANK: dict[str, int] = {
    "pending": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "read": 4,
    "failed": 5,
    "skipped": 5,
    "cancelled": 5,
}
FINAL_MESSAGE_STATUSES = frozenset({"failed", "skipped", "cancelled"})


# The one backwards move of a message: an attempt that failed with a retryable error before
# WhatsApp accepted the message (no wamid stored, no receipt applied) returns the row from
# `sending` to `pending`, so the next attempt claims it with the same compare-and-set.
# A row whose request may have reached WhatsApp stays `sending`: it is never re-sent.
RETRY_BEFORE_ACCEPTED: tuple[str, str] = ("sending", "pending")

# The other one, on an operator's request only (retry-failed): a row that failed for a
# reason that can pass (a retryable error, an account-level one) and that WhatsApp never
# accepted goes back to `pending` to be queued again.
RETRY_ON_REQUEST: tuple[str, str] = ("failed", "pending")


def campaign_sources(target: str) -> list[str]:
    """Every campaign status from which `target` may be reached."""
    return sorted(s for s, moves in CAMPAIGN_MOVES.items() if target in moves)


def member_sources(target: str) -> list[str]:
    return sorted(s for s, moves in MEMBER_MOVES.items() if target in moves)


def message_may_move(current: str, new: str) -> bool:
    if current in FINAL_MESSAGE_STATUSES:
        return False
    return MESSAGE_RANK[new] > MESSAGE_RANK[current]
