"""Whether a campaign can send what it is meant to: checked before approval, so that no media
is generated for a campaign whose messages would all fail at dispatch.

The checks follow the rules dispatch applies to each member (`resources/queue_message.py`)
and run in the database, over the whole audience at once:

- the audience is not empty, and every number has E.164's shape (audiences are normalised
  when they are imported; a number written by other means is caught here);
- every template parameter resolves for every member: `attributes.<key>` from the member's
  attributes, else the contact's; `contact.name` / `contact.first_name` from the contact's
  name, else the member's; `contact.phone`; any other `contact.<field>` from the contact's
  attributes (which override the three above); `literal:<text>`. A missing value, JSON null
  or only whitespace is missing;
- every asset the messages need (an `asset.<type>` parameter, or a media campaign's own
  type) is a type the template's active generator returns. The generator runs only later,
  in the media sandbox, so this is read from its source: the keys of the literal dicts that
  `generate_asset` returns. When the returns are not literal dicts the types cannot be told,
  and the report says so as a warning instead of refusing;
- the message type fits the template: a template campaign has one, a media header takes a
  parameter of its type, an asset parameter of a media type uses that asset. Whether our
  parameters fit Meta's components, and whether Meta approved the template, is
  `templates.approval_refusal`'s, whose reasons are reported here too.

Problems name the members they concern (id and number, the first few) for the operator
API's answer only: `Report.summary()`, the text of exceptions and log lines, holds counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import templates as meta_templates
from resources.asset_kinds import ASSET_KINDS
from resources.errors import DomainError, InvalidInput
from resources.phone import E164_PATTERN
from resources.queue_message import MEDIA_MESSAGE_TYPES, PARAMETER_MEDIA_TYPES

# Members named per problem in an answer.
FIRST_MEMBERS = 5
SOURCES = ("contact.", "attributes.", "asset.", "literal:")
# What `str.strip()` removes: a value made only of these is missing, as at dispatch.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# `contact_fields` in dispatch: the contact's name, else the member's (an empty contact name
# counts as none); `first_name` is missing exactly when that name is blank.
_CONTACT_NAME = "COALESCE(NULLIF(ct.name, ''), a.name)"
_DERIVED = {"name": _CONTACT_NAME, "first_name": _CONTACT_NAME, "phone": "a.msisdn"}


@dataclass(frozen=True)
class Problem:
    """Why the campaign cannot be approved. `scope` is `campaign` when every member is
    concerned alike (then `members` is empty), `member` when some are."""

    check: str
    field: str
    error: str
    count: int
    scope: str = "campaign"
    members: tuple[dict[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "field": self.field,
            "error": self.error,
            "scope": self.scope,
            "count": self.count,
            "members": list(self.members),
        }


@dataclass(frozen=True)
class Notice:
    """A check that could not be made, or a risk that does not refuse the campaign."""

    check: str
    field: str
    warning: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "field": self.field, "warning": self.warning}


@dataclass(frozen=True)
class Report:
    campaign_id: str
    members: int
    problems: list[Problem]
    warnings: list[Notice]
    checks: list[str]

    @property
    def ready(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "ready": self.ready,
            "members": self.members,
            "errors": [p.as_dict() for p in self.problems],
            "warnings": [w.as_dict() for w in self.warnings],
            "checks": self.checks,
        }

    def summary(self) -> str:
        """One line, counts only (no member is named)."""
        if self.ready:
            return f"campaign {self.campaign_id} is ready ({self.members:,} members)"
        found = "; ".join(f"{p.field}: {p.error}" for p in self.problems)
        n = len(self.problems)
        return (
            f"campaign {self.campaign_id} cannot be approved"
            f" ({n} problem{'s' if n != 1 else ''}): {found}"
        )


# What a generator returns, read from its source.


@dataclass(frozen=True)
class GeneratorReturns:
    """The asset types `generate_asset` returns, as far as its source tells.

    `types`: every type some literal-dict return gives; `always`: those every such return
    gives; `opaque`: some return is not a literal dict (so its types cannot be told);
    `broken`: why the generator cannot produce anything at all."""

    types: frozenset[str] = frozenset()
    always: frozenset[str] = frozenset()
    opaque: str | None = None
    broken: str | None = None


def generator_returns(source: str, file_name: str = "generator.py") -> GeneratorReturns:
    try:
        tree = ast.parse(source, file_name)
    except SyntaxError as error:
        return GeneratorReturns(
            broken=f"{file_name} does not compile: {error.msg} (line {error.lineno})"
        )
    defined = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "generate_asset"
    ]
    if not defined:
        return GeneratorReturns(
            opaque=f"{file_name} has no top-level `def generate_asset`; its returns cannot be read"
        )
    returned: list[frozenset[str]] = []
    opaque = None
    for node in _returns(defined[-1]):
        value = node.value
        if value is None or (isinstance(value, ast.Constant) and value.value is None):
            continue  # a path that fails its member in the sandbox; not a type
        keys = _literal_keys(value)
        if keys is None:
            opaque = opaque or (
                f"{file_name} line {node.lineno}: generate_asset returns"
                f" `{_snippet(value)}`, not a literal dict; its asset types cannot be read"
            )
        else:
            returned.append(keys)
    if not returned and opaque is None:
        return GeneratorReturns(
            broken=f"{file_name}: generate_asset never returns a dict of files (it returns None)"
        )
    types = frozenset().union(*returned)
    always = frozenset.intersection(*returned) if returned else frozenset()
    return GeneratorReturns(types, always, opaque)


def _returns(function: ast.FunctionDef) -> Iterator[ast.Return]:
    """The function's own return statements (not those of functions defined inside it)."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(node, ast.Return):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _literal_keys(value: ast.expr) -> frozenset[str] | None:
    if isinstance(value, ast.Dict):
        if all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys):
            return frozenset(k.value for k in value.keys)
        return None
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "dict"
        and not value.args
        and all(k.arg is not None for k in value.keywords)
    ):
        return frozenset(k.arg for k in value.keywords)
    return None


def _snippet(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


# The campaign.


@dataclass(frozen=True)
class _Campaign:
    id: str
    message_type: str
    message_content: str | None
    template_id: int | None
    template: str | None
    template_type: str | None
    parameters: list[Any]
    components: Any
    generator_file: str | None
    generator_version: int | None
    generator_source: str | None


@dataclass
class _MemberCheck:
    """A per-member check. `value` is SQL over the member (`a`) and its contact (`ct`),
    computed once per member: a text that fails the check when it is missing or blank
    (`text`), else a boolean that is true for a member failing it."""

    check: str
    field: str
    error: str  # completed with the count: "{error} for N of M members"
    value: str
    text: bool = True


@dataclass
class _Checks:
    members: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Notice] = field(default_factory=list)
    member_checks: list[_MemberCheck] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    def problem(self, check: str, where: str, error: str) -> None:
        self.problems.append(Problem(check, where, error, self.members))

    def warn(self, check: str, where: str, warning: str) -> None:
        self.warnings.append(Notice(check, where, warning))


def check(conn: sa.Connection, campaign_id: UUID, production: bool) -> Report | None:
    """The campaign's readiness, or None when there is no such campaign."""
    campaign = _load(conn, campaign_id)
    if campaign is None:
        return None
    found = _Checks()
    found.members = conn.execute(
        sa.text("SELECT count(*) FROM campaign_audience WHERE campaign_id = :c"),
        {"c": campaign_id},
    ).scalar_one()
    found.made.append("audience")
    if not found.members:
        found.problem(
            "audience",
            "audience",
            f"the campaign has no members; add its audience first"
            f" (POST /api/campaigns/{campaign_id}/audience)",
        )
    _message_type(conn, campaign, found, production)
    _assets(campaign, found)
    found.made.append("numbers")
    # A number linked to its contact has the shape: `contacts.phone` is checked against it
    # by the table itself. The others are matched against it here.
    found.member_checks.insert(
        0,
        _MemberCheck(
            "number",
            "msisdn",
            "the number is not a valid E.164 number",
            "ct.phone IS DISTINCT FROM a.msisdn AND a.msisdn !~ :e164",
            text=False,
        ),
    )
    found.params["e164"] = f"^{E164_PATTERN}$"
    found.params["whitespace"] = WHITESPACE
    if found.members:
        found.problems += _run_member_checks(conn, campaign_id, found)
    return Report(
        campaign.id,
        found.members,
        found.problems,
        found.warnings,
        found.made,
    )


def _load(conn: sa.Connection, campaign_id: UUID) -> _Campaign | None:
    row = conn.execute(
        sa.text(
            "SELECT c.id::text, c.message_type, c.message_content, c.template_id,"
            " t.name, t.message_type, COALESCE(t.parameters, '[]'::jsonb), t.components,"
            " g.file_name, g.version, g.file_content"
            " FROM campaigns c LEFT JOIN templates t ON t.id = c.template_id"
            " LEFT JOIN asset_generate_files g ON g.template_id = c.template_id AND g.is_active"
            " WHERE c.id = :c"
        ),
        {"c": campaign_id},
    ).one_or_none()
    return _Campaign(*row) if row else None


def _message_type(
    conn: sa.Connection, campaign: _Campaign, found: _Checks, production: bool
) -> None:
    """The campaign's message type against its content and its template."""
    found.made.append("message_type")
    if campaign.message_type == "text":
        if not (campaign.message_content or "").strip():
            found.problem("message_type", "message_content", "a text campaign needs its text")
        return
    if campaign.message_type != "template":
        return  # a media campaign: its asset is checked with the generator
    if campaign.template_id is None:
        found.problem("message_type", "template_id", "a template campaign needs a template")
        return
    found.made.append("template")
    refusal = meta_templates.approval_refusal(conn, campaign.template_id, production)
    for reason in refusal.reasons if refusal else ():
        found.problem("template", "template", reason)
    label = f"template {campaign.template!r}"
    parameters = campaign.parameters if isinstance(campaign.parameters, list) else []
    headers = [p for p in parameters if isinstance(p, dict) and p.get("type") == "header"]
    # With Meta's components known, approval_refusal has checked the header against them.
    if campaign.components is None:
        kind = campaign.template_type
        if kind in PARAMETER_MEDIA_TYPES:
            if [h.get("valueType") for h in headers] != [kind]:
                found.problem(
                    "message_type",
                    "template.parameters",
                    f"{label} is {_a(kind)} template: it takes one header parameter with"
                    f" valueType {kind}; configured: "
                    + (", ".join(str(h.get("valueType")) for h in headers) or "none"),
                )
        elif any(h.get("valueType") != "text" for h in headers):
            found.problem(
                "message_type",
                "template.parameters",
                f"{label} is a text template: its header parameters must be text",
            )
    found.made.append("parameters")
    by_source: dict[str, list[int]] = {}
    for position, parameter in enumerate(parameters, start=1):
        source = parameter.get("source", "") if isinstance(parameter, dict) else ""
        by_source.setdefault(str(source or ""), []).append(position)
        value_type = parameter.get("valueType") if isinstance(parameter, dict) else None
        wanted = source.removeprefix("asset.") if isinstance(source, str) else ""
        if (
            isinstance(source, str)
            and source.startswith("asset.")
            and value_type in PARAMETER_MEDIA_TYPES
            and wanted != value_type
        ):
            found.problem(
                "message_type",
                f"template.parameters[{position - 1}]",
                f"parameter {position} is {value_type} but its source is {source}",
            )
    for source, positions in by_source.items():
        where = ", ".join(f"template.parameters[{p - 1}]" for p in positions)
        named = f"{source} (template parameter{'s' if len(positions) > 1 else ''}"
        named += f" {', '.join(map(str, positions))})"
        if not source.startswith(SOURCES):
            found.problem(
                "parameter",
                where,
                f"{source or 'no source'}: unknown source (expected contact.<field>,"
                " attributes.<key>, asset.<type> or literal:<text>)",
            )
        elif source.startswith("literal:"):
            if not source.removeprefix("literal:").strip():
                found.problem("parameter", where, f"{named} is an empty literal")
        elif source.startswith(("contact.", "attributes.")):
            found.member_checks.append(
                _MemberCheck("parameter", where, f"{named} is missing", _value(source, found))
            )


def _value(source: str, found: _Checks) -> str:
    """SQL of the member's value for `source` as text, resolved as dispatch resolves it.
    `->>` gives a JSON string's text, other values' JSON text (never blank) and NULL for JSON
    null."""
    key = f"k{len(found.params)}"
    if source.startswith("attributes."):
        found.params[key] = source.removeprefix("attributes.")
        value = (
            f"CASE WHEN a.attributes ? :{key} THEN a.attributes ->> :{key}"
            f" ELSE ct.attributes ->> :{key} END"
        )
    else:
        name = source.removeprefix("contact.")
        found.params[key] = name
        derived = _DERIVED.get(name)
        value = f"ct.attributes ->> :{key}"
        if derived:
            value = f"CASE WHEN ct.attributes ? :{key} THEN {value} ELSE {derived} END"
    return value


def _blank(column: str) -> str:
    """True for a missing value or one of only whitespace (`str.strip()`'s); most values
    are told apart by their first character."""
    return (
        f"({column} IS NULL OR {column} = '' OR (strpos(:whitespace, left({column}, 1)) > 0"
        f" AND btrim({column}, :whitespace) = ''))"
    )


def _assets(campaign: _Campaign, found: _Checks) -> None:
    """The asset types the messages need against those the active generator returns."""
    needed: dict[str, str] = {}  # type → where it is needed
    if campaign.message_type in MEDIA_MESSAGE_TYPES:
        needed[campaign.message_type] = "message_type"
    if campaign.message_type == "template":
        for position, parameter in enumerate(campaign.parameters or [], start=1):
            source = parameter.get("source") if isinstance(parameter, dict) else None
            if isinstance(source, str) and source.startswith("asset."):
                needed.setdefault(
                    source.removeprefix("asset."), f"template.parameters[{position - 1}]"
                )
    generator = campaign.generator_source
    if not needed and generator is None:
        return
    found.made.append("assets")
    for kind, where in list(needed.items()):
        if kind not in ASSET_KINDS:
            found.problem(
                "asset",
                where,
                f"asset.{kind}: {kind!r} is not an asset type (one of {', '.join(ASSET_KINDS)})",
            )
            del needed[kind]
    if generator is None:
        for kind, where in needed.items():
            what = (
                f"{_a(kind)} campaign sends each member's generated {kind}"
                if where == "message_type"
                else f"asset.{kind} needs each member's generated {kind}"
            )
            found.problem(
                "asset",
                where,
                f"{what}, but "
                + (
                    "the campaign has no template"
                    if campaign.template_id is None
                    else f"template {campaign.template!r} has no active generator"
                ),
            )
        return
    label = f"generator {campaign.generator_file} (version {campaign.generator_version})"
    returns = generator_returns(generator, campaign.generator_file or "generator.py")
    if returns.broken:
        found.problem("asset", "generator", f"{label} cannot produce any file: {returns.broken}")
        return
    unknown = sorted(returns.types - set(ASSET_KINDS))
    if unknown:
        found.problem(
            "asset",
            "generator",
            f"{label} returns {', '.join(map(repr, unknown))}, not an asset type"
            f" (one of {', '.join(ASSET_KINDS)}): the sandbox refuses such a result",
        )
    for kind, where in needed.items():
        if kind in returns.always and returns.opaque is None:
            continue
        if kind in returns.types:
            if returns.opaque is None:
                found.warn(
                    "asset",
                    where,
                    f"{label} returns {kind} on some paths only: members without it will fail",
                )
            continue
        if returns.opaque is not None:
            found.warn(
                "asset",
                where,
                f"could not check that {label} returns {kind}: {returns.opaque}",
            )
            continue
        gives = ", ".join(sorted(returns.types)) or "nothing"
        found.problem(
            "asset",
            where,
            f"{'the message' if where == 'message_type' else f'asset.{kind}'} needs {_a(kind)}"
            f" asset, but {label} returns only {gives}",
        )


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _run_member_checks(conn: sa.Connection, campaign_id: UUID, found: _Checks) -> list[Problem]:
    """Every per-member check in one statement and one pass over the audience: each value
    is resolved once per member, the members failing any check are kept aside, then counted
    and the first few listed per check."""
    checks = found.member_checks
    values = ", ".join(f"{c.value} AS x{i}" for i, c in enumerate(checks))
    flags = ", ".join(
        f"{_blank(f'x{i}') if c.text else f'x{i}'} AS p{i}" for i, c in enumerate(checks)
    )
    any_flag = " OR ".join(f"p{i}" for i in range(len(checks)))
    per_check = " UNION ALL ".join(
        f"SELECT {i} AS n, (SELECT count(*) FROM failing WHERE p{i}) AS failed,"
        " (SELECT jsonb_agg(jsonb_build_object('id', f.id, 'msisdn', f.msisdn) ORDER BY f.id)"
        f" FROM (SELECT id, msisdn FROM failing WHERE p{i} ORDER BY id"
        f" LIMIT {FIRST_MEMBERS}) f) AS first"
        for i in range(len(checks))
    )
    # OFFSET 0 keeps the values a subquery of their own: computed once, not once per use.
    statement = (
        "WITH failing AS MATERIALIZED (SELECT * FROM ("
        f" SELECT id, msisdn, {flags} FROM ("
        f"  SELECT a.id, a.msisdn, {values}"
        "   FROM campaign_audience a LEFT JOIN contacts ct ON ct.id = a.contact_id"
        "   WHERE a.campaign_id = :c OFFSET 0) resolved) checked"
        f" WHERE {any_flag})"
        f" {per_check} ORDER BY n"
    )
    rows = conn.execute(sa.text(statement), {**found.params, "c": campaign_id}).all()
    return [
        Problem(
            checks[i].check,
            checks[i].field,
            f"{checks[i].error} for {failed:,} of {found.members:,} members",
            failed,
            "member",
            tuple(first),
        )
        for i, failed, first in rows
        if failed
    ]


class NotReady(InvalidInput):
    """The campaign cannot send what it is meant to: every problem with its count and first
    members in `report`; the message holds counts only."""

    code = "not_ready"
    summary = "campaign not ready"

    def __init__(self, report: Report) -> None:
        DomainError.__init__(self, report.summary())
        self.report = report
        self.errors = [p.as_dict() for p in report.problems]

    def fields(self) -> dict[str, Any]:
        return self.report.as_dict()
