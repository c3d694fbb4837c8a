"""How the campaign operations' results become the JSON the operator API answers (and the
CLI prints): dates and times in ISO 8601, ids as text."""

from __future__ import annotations

import json
from typing import Any


def jsonable(value: Any) -> Any:
    """`value` with every date, time, UUID or other non-JSON value as its text."""
    return json.loads(
        json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )
