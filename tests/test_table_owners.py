"""One module owns the SQL of each family of tables, and every other module calls its
functions: a statement on `messages` is in `resources/messages.py` (the sender's own, run on
a connection per lane, in `resources/sender_store.py`, the release of held rows in
`resources/held_messages.py`, a conversation's replies in `resources/outbox.py`, its
unanswered messages in `resources/message_buffer.py`, what it stores, turns and shows in
`resources/conversation_messages.py`, delivery receipts in
`resources/message_receipts.py`); one on
`campaign_audience` is in `resources/audience.py` (members as the runs move them) or
`resources/campaigns.py` (the audience an operator uploads and reads); one on `campaigns`
in `resources/campaigns.py` (its media generation's moves in
`resources/media_generation.py`), one on `campaign_runs` in `resources/campaign_runs.py`. One on
`conversations` is in `resources/conversations.py` (the agent's lease on one in
`resources/message_buffer.py`); one on `contacts` or `consent_events` in
`resources/consent.py` or `resources/contact_identity.py` (a contact's numbers and merges);
one on `media` in `resources/media_files.py`.

A statement belongs with the table it is about: the one it writes (INSERT INTO, UPDATE,
DELETE FROM), or else the first one it reads FROM; the tables it joins or looks into on the
way are part of it. Read from the source with `ast`, as in `tests/test_status_owner.py`:
SQL is written with upper-case keywords, prose with lower-case words."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.test_status_owner import PACKAGES, _sql_texts

ROOT = Path(__file__).resolve().parents[1]
OWNERS = {
    "messages": {
        "resources/messages.py",
        "resources/sender_store.py",
        "resources/held_messages.py",
        "resources/outbox.py",
        "resources/message_buffer.py",
        "resources/conversation_messages.py",
        "resources/message_receipts.py",  # receipts applied to their message
    },
    "campaign_audience": {"resources/audience.py", "resources/campaigns.py"},
    # A campaign's fields and status moves; its media generation's own columns and moves.
    "campaigns": {"resources/campaigns.py", "resources/media_generation.py"},
    "campaign_runs": {"resources/campaign_runs.py"},
    "conversations": {
        "resources/conversations.py",
        "resources/message_buffer.py",  # the agent's lease: a due turn claimed, released
    },
    "contacts": {"resources/consent.py", "resources/contact_identity.py"},
    "consent_events": {"resources/consent.py", "resources/contact_identity.py"},
    "media": {"resources/media_files.py"},
}
# Modules whose SQL names an owned table they do not own, each with why: the archive's moves
# beside its objects, statements about another table that look into these, and one
# set-wise statement across two families (the last test keeps the list true).
ALLOWED = {
    # Whole months and days out and back, beside the objects they are written to and read
    # from: a COPY streamed to S3, the DELETE of what was archived, the restore's INSERT,
    # each media file's row moved with its object.
    "assets_defs/archive/messages.py": "COPY, count and DELETE of an archived month",
    "assets_defs/archive/restore.py": "INSERT of a month's rows read back from the archive",
    "assets_defs/archive/demo.py": "generates old months of rows for the archive demo",
    "assets_defs/archive/media.py": "a day's media rows moved with their objects, hot copies",
    # Statements about another table that look into these in the same statement.
    "resources/breakers.py": "listing: circuit_breakers, each with a count of its held rows",
    "resources/campaign_funnel.py": "campaigns, each with its runs' rows and skipped members counted",
    "resources/readiness.py": "the campaign it checks, with its template, and the checks over members",
    # Which organisation a campaign belongs to, read where that is the question asked.
    "resources/tenants.py": "the organisation owning a campaign, for the caller's access",
    "resources/generators.py": "a preview's campaign must be of the generator's organisation",
    "resources/templates.py": "active campaigns on templates that cannot send, for its check",
    # The dev stack's demo: finds its campaign, and sums it up for `make dev`.
    "pipelines/dev/demo.py": "the demo campaign by organisation, its tier and its runs' counts",
    "resources/contact_identity.py": "merging two contacts re-points every row that names one",
    "resources/conversations.py": "listing: conversations, each with its contact, last message"
    " and unanswered count",
    # Across two families in one statement, kept with the upload it is part of.
    "resources/campaigns.py": "an uploaded audience's contacts made in one INSERT … SELECT",
}

_NAMED = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|COPY)\s+(" + "|".join(OWNERS) + r")\b")
_WRITTEN = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)")
_READ = re.compile(r"\bFROM\s+(\w+)")


_NESTED = re.compile(r"\([^()]*\)")
_MAIN_WRITE = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)")


def _top_level(sql: str) -> str:
    """The statement without what is in parentheses: its CTEs' bodies and subqueries."""
    while (flat := _NESTED.sub(" ", sql)) != sql:
        sql = flat
    return sql


def subject(sql: str) -> str | None:
    """The table the statement is about: the one it writes (after its CTEs, if any), else
    the first it reads at the top level, else the first it reads."""
    top = _top_level(sql)
    written = _MAIN_WRITE.search(top) if top.lstrip().startswith("WITH") else _WRITTEN.search(sql)
    found = written or _READ.search(top) or _READ.search(sql)
    return found[1] if found else None


def strays(module: str, sql: str) -> set[str]:
    """The owned tables `sql` names that `module` may not: none when the module owns the
    statement's subject, or every owned table it names."""
    named = set(_NAMED.findall(sql))
    if module in OWNERS.get(subject(sql) or "", ()):
        return set()
    return {table for table in named if module not in OWNERS[table]}


@pytest.mark.parametrize(
    ("module", "sql", "found"),
    [
        (
            "assets_defs/x.py",
            "UPDATE messages m SET status = 'failed' WHERE m.id = :i",
            {"messages"},
        ),
        (
            "assets_defs/x.py",
            "SELECT count(*) FROM messages m JOIN campaign_runs r",
            {"messages", "campaign_runs"},
        ),
        (
            "resources/progress.py",
            "SELECT r.id FROM campaign_runs r WHERE NOT EXISTS (SELECT 1 FROM messages m)",
            {"campaign_runs", "messages"},
        ),
        (
            "assets_defs/x.py",
            "INSERT INTO campaign_audience (campaign_id) VALUES (:c)",
            {"campaign_audience"},
        ),
        (
            "assets_defs/x.py",
            "COPY (SELECT row_to_json(m) FROM messages m) TO STDOUT",
            {"messages"},
        ),
        ("resources/messages.py", "SELECT m.id FROM messages m JOIN campaign_audience a", set()),
        (
            "resources/audience.py",
            "SELECT a.id FROM campaign_audience a WHERE NOT EXISTS (SELECT 1 FROM messages m)",
            set(),
        ),
        (
            "resources/campaigns.py",
            "INSERT INTO phone_numbers (phone) SELECT msisdn FROM campaign_audience",
            set(),
        ),
        ("resources/audience.py", "UPDATE messages SET status = 'failed'", {"messages"}),
        ("assets_defs/x.py", "the row is removed from messages it no longer needs", set()),
        ("assets_defs/x.py", "SELECT 1 FROM messages_archive", set()),
        ("assets_defs/x.py", "UPDATE campaigns SET asset_failure_ratio = :r", {"campaigns"}),
        ("resources/media_generation.py", "UPDATE campaigns SET asset_failure_ratio = :r", set()),
        ("resources/campaign_runs.py", "SELECT status FROM campaigns WHERE id = :c", {"campaigns"}),
        (
            "webhook_app/x.py",
            "WITH w AS (SELECT conversation_id FROM messages) UPDATE conversations c SET x = 1",
            {"conversations", "messages"},
        ),
    ],
)
def test_the_check_finds_statements_on_owned_tables(module, sql, found):
    assert strays(module, sql) == found


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("UPDATE messages SET status = 'sent'", "messages"),
        (
            "WITH w AS (SELECT conversation_id FROM messages) UPDATE conversations c SET x = 1",
            "conversations",
        ),
        ("SELECT c.id, (SELECT count(*) FROM messages u) FROM conversations c", "conversations"),
        ("SELECT 1 WHERE EXISTS (SELECT 1 FROM messages)", "messages"),
    ],
)
def test_a_statement_is_about_what_it_writes_or_reads_at_its_top_level(sql, table):
    assert subject(sql) == table


def _strays_by_module() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = str(path.relative_to(ROOT))
            for sql in _sql_texts(ast.parse(path.read_text())):
                found.setdefault(module, set()).update(strays(module, sql))
    return {module: tables for module, tables in found.items() if tables}


def test_only_the_owning_modules_write_sql_on_their_tables():
    strayed = {m: sorted(t) for m, t in _strays_by_module().items() if m not in ALLOWED}
    assert strayed == {}, f"call the owning module's functions instead: {strayed}"


def test_every_allowed_module_still_needs_it():
    assert sorted(set(ALLOWED) - set(_strays_by_module())) == []
