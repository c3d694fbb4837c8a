"""The errors of the operations an operator calls (the operator API, the console, the CLI):
bad input, with every problem listed; a row that does not exist; a change the row's state
refuses. The web side and the CLI say each to the caller."""

from __future__ import annotations

from typing import Any


class InvalidInput(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(
            "; ".join(f"{e.get('field', e.get('line'))}: {e['error']}" for e in errors)
        )
        self.errors = errors


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass
