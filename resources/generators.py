"""Generator authoring (seed 1): publish a template's media generator, list and roll its
versions back or forward, and preview a draft or a stored version for one sample member.

The operator API, the CLI and the console all call these functions. A source is checked
before anything is stored (it compiles, defines `generate_asset` with four parameters and
fits `GENERATOR_MAX_BYTES`): a rejection names the line and the reason and stores nothing.
A preview runs in the media sandbox exactly as a campaign would (`run_sample`), under the
campaign's limits and `GENERATOR_PREVIEW_SECONDS`, and reports the generator's own failure
as its result rather than as an error of the call.
"""

from __future__ import annotations

import ast
import base64
import functools
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import audience, campaigns, settings
from resources.errors import InvalidInput, NotFound, Unavailable
from resources.fields import is_id
from resources.sandbox.isolation import SandboxUnavailable
from resources.sandbox.pool import Limits, MemberInput, run_sample

SIGNATURE = "generate_asset(attributes, name, msisdn, temp_dir)"
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.py")
DEFAULT_FILE_NAME = "generator.py"
MAX_DESCRIPTION = 2000
# The member a preview runs for when none is named.
SAMPLE_MEMBER = {"name": "Ada Lovelace", "msisdn": "+447700900123", "attributes": {}}
# Files up to this size come back whole in a preview's JSON answer; larger ones by size only.
INLINE_BYTES = 5 * 1024 * 1024


class GeneratorRejected(InvalidInput):
    """The source cannot be published: `line` (None when no line is to blame) and `reason`."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__([{"field": "source", "line": line, "error": reason}])
        self.line = line
        self.reason = reason
        self.args = (f"line {line}: {reason}" if line else reason,)

    def __str__(self) -> str:
        return self.args[0]


class PreviewUnavailable(Unavailable):
    """The preview cannot run now: no sandbox on this host, or no free slot; the message
    says which."""


class PreviewBusy(PreviewUnavailable):
    """Every preview slot of this process stayed taken for the preview's whole time limit."""


@dataclass(frozen=True)
class GeneratorVersion:
    template_id: int
    version: int
    file_name: str
    description: str
    active: bool
    created_at: datetime
    source: str | None = None  # None in listings

    def as_dict(self) -> dict[str, Any]:
        data = {
            "template_id": self.template_id,
            "version": self.version,
            "file_name": self.file_name,
            "description": self.description,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
        }
        return data if self.source is None else {**data, "source": self.source}


@dataclass(frozen=True)
class PreviewFile:
    name: str
    content_type: str
    size: int
    thumbnail_png: bytes | None
    data: bytes
    asset_type: str = ""

    def as_dict(self) -> dict[str, Any]:
        inline = self.size <= INLINE_BYTES
        return {
            "asset_type": self.asset_type,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "thumbnail_png": _b64(self.thumbnail_png),
            "data": _b64(self.data) if inline else None,
        }


@dataclass(frozen=True)
class PreviewResult:
    """One sample member's run: the files, or the error and the traceback lines of the
    generator's own code; its printed output, time and the worker's peak memory."""

    ok: bool
    files: list[PreviewFile] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    error: str | None = None
    traceback: list[str] = field(default_factory=list)
    version: int | None = None  # the stored version run, None for a draft
    member: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "version": self.version,
            "member": self.member,
            "files": [f.as_dict() for f in self.files],
            "output": self.output,
            "seconds": round(self.seconds, 3),
            "peak_memory_mb": self.peak_memory_mb,
            "error": self.error,
            "traceback": self.traceback,
        }


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def validate_source(source: str) -> None:
    """Refuse, with its line and reason, a source that cannot be a generator: too large,
    not compiling, or without a module-level `def generate_asset` of four parameters."""
    if not isinstance(source, str):
        raise GeneratorRejected(None, "the source must be text")
    if not source.strip():
        raise GeneratorRejected(None, "the source is empty")
    try:
        size = len(source.encode("utf-8"))
    except UnicodeEncodeError as error:
        line = source.count("\n", 0, error.start) + 1
        raise GeneratorRejected(line, "not Unicode text (a lone surrogate)") from None
    if "\x00" in source:
        line = source.count("\n", 0, source.index("\x00")) + 1
        raise GeneratorRejected(line, "a NUL character, which cannot be stored")
    limit = settings.number("GENERATOR_MAX_BYTES")
    if size > limit:
        raise GeneratorRejected(
            None, f"the source is {size} bytes, over the {limit}-byte limit (GENERATOR_MAX_BYTES)"
        )
    try:
        tree = ast.parse(source)
        compile(tree, "generator.py", "exec", dont_inherit=True)
    except SyntaxError as error:
        raise GeneratorRejected(error.lineno, f"syntax error: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise GeneratorRejected(None, "cannot compile: nested too deeply") from None
    _check_signature(tree)


def _check_signature(tree: ast.Module) -> None:
    defined = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name == "generate_asset"
    ]
    if not defined:
        raise GeneratorRejected(None, f"no module-level def {SIGNATURE}")
    function = defined[-1]  # the one the module ends up with
    if isinstance(function, ast.AsyncFunctionDef):
        raise GeneratorRejected(function.lineno, "generate_asset must be a plain def, not async")
    args = function.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    required_keywords = [
        a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if not default
    ]
    if len(positional) != 4 or args.vararg or args.kwarg or required_keywords:
        shown = ast.unparse(args)[:120]
        raise GeneratorRejected(
            function.lineno,
            f"generate_asset({shown}) must take exactly four parameters: {SIGNATURE}",
        )


def _check_file_name(file_name: Any) -> str:
    if not isinstance(file_name, str) or not FILE_NAME.fullmatch(file_name):
        raise InvalidInput(
            [
                {
                    "field": "file_name",
                    "error": "must be a file name ending in .py (letters, digits, _ . -;"
                    " at most 100 characters)",
                }
            ]
        )
    return file_name


def _check_description(description: Any) -> str:
    if description is None:
        return ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidInput(
            [{"field": "description", "error": f"must be text of at most {MAX_DESCRIPTION}"}]
        )
    if "\x00" in description or not _encodable(description):
        raise InvalidInput(
            [{"field": "description", "error": "has a NUL or a lone surrogate, not storable"}]
        )
    return description


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _template_organisation(conn: sa.Connection, template_id: int, lock: bool = False) -> str:
    """The template's organisation; with `lock`, the template stays locked until the
    transaction ends (one publish or activation at a time per template)."""
    organisation = conn.execute(
        sa.text(
            "SELECT organisation_id::text FROM templates WHERE id = :t"
            + (" FOR UPDATE" if lock else "")
        ),
        {"t": template_id},
    ).scalar_one_or_none()
    if organisation is None:
        raise NotFound(f"template {template_id} does not exist")
    return organisation


_COLUMNS = "template_id, version, file_name, COALESCE(description, '') AS description," + (
    " is_active AS active, created_at"
)


def _version(row: sa.Row, with_source: bool) -> GeneratorVersion:
    values = dict(row._mapping)
    return GeneratorVersion(**values) if with_source else GeneratorVersion(**values, source=None)


def publish(
    engine: sa.Engine,
    template_id: int,
    source: str,
    file_name: str = DEFAULT_FILE_NAME,
    description: str = "",
) -> GeneratorVersion:
    """Store the source as the template's next version and make it the active one; a
    rejected source or field stores nothing."""
    file_name = _check_file_name(file_name)
    description = _check_description(description)
    validate_source(source)
    with engine.begin() as conn:
        _template_organisation(conn, template_id, lock=True)
        version = campaigns.add_generator(conn, template_id, file_name, source, description)
    return get_version(engine, template_id, version)


def list_versions(engine: sa.Engine, template_id: int) -> list[GeneratorVersion]:
    """Every version of the template's generator, newest first, without their sources."""
    with engine.connect() as conn:
        if (
            conn.execute(
                sa.text("SELECT 1 FROM templates WHERE id = :t"), {"t": template_id}
            ).first()
            is None
        ):
            raise NotFound(f"template {template_id} does not exist")
        rows = conn.execute(
            sa.text(
                f"SELECT {_COLUMNS} FROM asset_generate_files WHERE template_id = :t"
                " ORDER BY version DESC"
            ),
            {"t": template_id},
        ).all()
    return [_version(row, with_source=False) for row in rows]


def get_version(engine: sa.Engine, template_id: int, version: int) -> GeneratorVersion:
    """One version, with its source."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                f"SELECT {_COLUMNS}, file_content AS source FROM asset_generate_files"
                " WHERE template_id = :t AND version = :v"
            ),
            {"t": template_id, "v": version},
        ).one_or_none()
    if row is None:
        raise NotFound(f"template {template_id} has no generator version {version}")
    return _version(row, with_source=True)


def activate(engine: sa.Engine, template_id: int, version: int) -> GeneratorVersion:
    """Make `version` the template's active one (a roll back or forward). Members of a
    running campaign not yet generated get it; those done keep what they have."""
    with engine.begin() as conn:
        _template_organisation(conn, template_id, lock=True)
        exists = conn.execute(
            sa.text("SELECT 1 FROM asset_generate_files WHERE template_id = :t AND version = :v"),
            {"t": template_id, "v": version},
        ).first()
        if exists is None:
            raise NotFound(f"template {template_id} has no generator version {version}")
        conn.execute(
            sa.text(
                "UPDATE asset_generate_files SET is_active = false"
                " WHERE template_id = :t AND is_active AND version <> :v"
            ),
            {"t": template_id, "v": version},
        )
        conn.execute(
            sa.text(
                "UPDATE asset_generate_files SET is_active = true"
                " WHERE template_id = :t AND version = :v"
            ),
            {"t": template_id, "v": version},
        )
    return get_version(engine, template_id, version)


def _active_version(engine: sa.Engine, template_id: int) -> int:
    with engine.connect() as conn:
        version = conn.execute(
            sa.text(
                "SELECT version FROM asset_generate_files WHERE template_id = :t AND is_active"
            ),
            {"t": template_id},
        ).scalar_one_or_none()
    if version is None:
        raise NotFound(f"template {template_id} has no active generator")
    return version


def _member(value: Any) -> dict[str, Any]:
    """A sample member given in a request: `msisdn` text, `name` text or null, `attributes`
    an object."""
    if value is None:
        return dict(SAMPLE_MEMBER)
    if not isinstance(value, dict):
        raise InvalidInput([{"field": "member", "error": "must be an object"}])
    errors = []
    msisdn = value.get("msisdn", SAMPLE_MEMBER["msisdn"])
    name = value.get("name")
    attributes = value.get("attributes", {})
    if not isinstance(msisdn, str) or not msisdn:
        errors.append({"field": "member.msisdn", "error": "must be a phone number (text)"})
    if name is not None and not isinstance(name, str):
        errors.append({"field": "member.name", "error": "must be text or null"})
    if not isinstance(attributes, dict):
        errors.append({"field": "member.attributes", "error": "must be an object"})
    if errors:
        raise InvalidInput(errors)
    return {"name": name, "msisdn": msisdn, "attributes": attributes}


def _campaign_member(conn: sa.Connection, organisation_id: str, campaign_id: Any) -> dict:
    """The first member (in import order) of a campaign of the template's organisation."""
    try:
        campaign = str(UUID(str(campaign_id)))
    except ValueError:
        raise InvalidInput([{"field": "campaign_id", "error": "must be a UUID"}]) from None
    owner = conn.execute(
        sa.text("SELECT organisation_id::text FROM campaigns WHERE id = :c"), {"c": campaign}
    ).scalar_one_or_none()
    if owner != organisation_id:
        raise NotFound(f"campaign {campaign} does not exist")
    member = audience.first_member(conn, UUID(campaign))
    if member is None:
        raise InvalidInput([{"field": "campaign_id", "error": "the campaign has no members"}])
    return member


@functools.cache
def _slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(settings.number("GENERATOR_PREVIEWS_AT_ONCE"))


def preview(
    engine: sa.Engine,
    template_id: int,
    *,
    source: str | None = None,
    version: int | None = None,
    member: dict | None = None,
    campaign_id: Any = None,
    file_name: str = DEFAULT_FILE_NAME,
) -> PreviewResult:
    """Run a draft `source`, a stored `version` or (neither given) the active version for
    one sample member: `member` as given, the first of `campaign_id`, or `SAMPLE_MEMBER`.
    The generator's failure (a draft that would be rejected, an exception, the time limit)
    is the result's `error`; bad fields raise `InvalidInput`, a missing row `NotFound`, and
    `PreviewUnavailable` when it cannot run now (no sandbox, no free slot)."""
    if source is not None and version is not None:
        raise InvalidInput([{"field": "source", "error": "give source or version, not both"}])
    if member is not None and campaign_id is not None:
        raise InvalidInput([{"field": "member", "error": "give member or campaign_id, not both"}])
    if version is not None and not is_id(version):
        raise InvalidInput([{"field": "version", "error": "must be a version number"}])
    with engine.connect() as conn:
        organisation = _template_organisation(conn, template_id)
        sample = (
            _campaign_member(conn, organisation, campaign_id)
            if campaign_id is not None
            else _member(member)
        )
    if source is None:
        stored = get_version(engine, template_id, version or _active_version(engine, template_id))
        source, file_name, version = stored.source or "", stored.file_name, stored.version
    else:
        if not isinstance(source, str):
            raise InvalidInput([{"field": "source", "error": "must be text"}])
        file_name = _check_file_name(file_name)
        try:
            validate_source(source)
        except GeneratorRejected as rejected:
            return PreviewResult(ok=False, error=str(rejected), member=sample)
    return _run(source, file_name, sample, version)


def _run(source: str, file_name: str, sample: dict[str, Any], version: int | None) -> PreviewResult:
    limits = settings.load(Limits)
    seconds = min(limits.timeout_seconds, settings.number("GENERATOR_PREVIEW_SECONDS"))
    limits = replace(limits, timeout_seconds=seconds)
    if not _slots().acquire(timeout=seconds):
        raise PreviewBusy(f"every preview slot stayed busy for {seconds:g} s; try again")
    try:
        member = MemberInput(sample["attributes"] or {}, sample["name"], sample["msisdn"])
        try:
            ran = run_sample(source, member, file_name, limits)
        except SandboxUnavailable as error:
            raise PreviewUnavailable(str(error)) from None
    finally:
        _slots().release()
    thumbnail = base64.b64decode(ran.preview) if ran.preview else None
    files = [
        PreviewFile(
            name=name,
            content_type=content_type,
            size=len(data),
            thumbnail_png=thumbnail if asset_type == "image" else None,
            data=data,
            asset_type=asset_type,
        )
        for name, (asset_type, content_type, data) in zip(ran.file_names, ran.files, strict=True)
    ]
    return PreviewResult(
        ok=ran.error is None,
        files=files,
        output=ran.output,
        seconds=ran.seconds,
        peak_memory_mb=ran.peak_memory_mb,
        error=ran.error,
        traceback=ran.traceback,
        version=version,
        member=sample,
    )
