"""Generator authoring's data layer and its CLI: publish (checked first, nothing stored when
rejected), versions, roll back and forward, and the preview in the real media sandbox."""

from __future__ import annotations

import base64
import json
import textwrap

import pytest
import sqlalchemy as sa

from pipelines.cli import main
from resources import errors, generators, operator_templates, organisations
from resources.sandbox.isolation import resolve
from resources.sandbox.pool import png_size

GOOD = textwrap.dedent(
    """
    import json, os

    def generate_asset(attributes, name, msisdn, temp_dir):
        print("card for", name)
        path = os.path.join(temp_dir, "card.json")
        with open(path, "w") as f:
            json.dump({"name": name, "offer": attributes.get("offer")}, f)
        return {"json": path}
    """
)

IMAGE = textwrap.dedent(
    """
    import os
    from PIL import Image

    def generate_asset(attributes, name, msisdn, temp_dir):
        path = os.path.join(temp_dir, "card.png")
        Image.new("RGB", (800, 400), (18, 140, 126)).save(path)
        return {"image": path}
    """
)

FAILING = textwrap.dedent(
    """
    def helper(value):
        return 1 / value

    def generate_asset(attributes, name, msisdn, temp_dir):
        print("about to fail")
        return helper(0)
    """
)

needs_sandbox = pytest.mark.skipif(
    not resolve().confined, reason="this host allows no sandbox (see README: media sandbox)"
)


@pytest.fixture
def template(engine) -> int:
    organisation = organisations.create_organisation(engine, {"name": "Shop"})["id"]
    created = operator_templates.create_template(
        engine, {"organisation_id": organisation, "name": "offer", "parameters": []}
    )
    return created["id"]


def stored(engine, template_id: int) -> list[tuple[int, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT version, is_active FROM asset_generate_files WHERE template_id = :t"
                " ORDER BY version"
            ),
            {"t": template_id},
        )
        return [tuple(row) for row in rows]


def test_publishing_lists_and_rolling_back_and_forward(engine, template):
    first = generators.publish(engine, template, GOOD, "offer.py", "first card")
    assert (first.version, first.active, first.source) == (1, True, GOOD)
    second = generators.publish(engine, template, GOOD.replace("card for", "hi"), "offer.py", "")
    assert second.version == 2 and second.active

    listed = generators.list_versions(engine, template)
    assert [(v.version, v.active, v.source) for v in listed] == [(2, True, None), (1, False, None)]
    assert listed[1].description == "first card" and listed[1].file_name == "offer.py"

    back = generators.activate(engine, template, 1)
    assert (back.version, back.active, back.source) == (1, True, GOOD)
    assert stored(engine, template) == [(1, True), (2, False)]
    assert generators.activate(engine, template, 2).active
    assert generators.activate(engine, template, 2).active  # activating the active one: same
    assert stored(engine, template) == [(1, False), (2, True)]

    with pytest.raises(errors.NotFound, match="no generator version 9"):
        generators.activate(engine, template, 9)
    with pytest.raises(errors.NotFound, match="template 999999 does not exist"):
        generators.publish(engine, 999999, GOOD, "offer.py", "")
    assert generators.get_version(engine, template, 1).as_dict()["source"] == GOOD


REJECTED = [
    ("def generate_asset(attributes, name, msisdn, temp_dir):\n    return {\n", 2, "syntax"),
    ("x = 1\ndef generate_asset(attributes, name, msisdn)\n    pass\n", 2, "syntax"),
    ("def generate_asset(attributes, name, msisdn):\n    return {}\n", 1, "exactly four"),
    ("\n\ndef generate_asset(*args):\n    return {}\n", 3, "exactly four"),
    ("def generate_asset(a, b, c, d, *, e):\n    return {}\n", 1, "exactly four"),
    ("async def generate_asset(a, b, c, d):\n    return {}\n", 1, "not async"),
    ("def generate(attributes, name, msisdn, temp_dir):\n    return {}\n", None, "no module"),
    ("def f():\n    def generate_asset(a, b, c, d):\n        pass\n", None, "no module"),
    ("return 1\n", 1, "'return' outside function"),
    ("   \n", None, "empty"),
    (42, None, "must be text"),
    ("def generate_asset(a, b, c, d):\n    return '\x00'\n", 2, "NUL"),
    ("x = 1\n# \ud800\ndef generate_asset(a, b, c, d):\n    pass\n", 2, "lone surrogate"),
    ("x = " + "(" * 300 + ")" * 300 + "\n", 1, "too many nested parentheses"),
    ("x = " + "1+" * 90_000 + "1\n", None, "nested too deeply"),
]


def test_a_rejected_source_names_line_and_reason_and_stores_nothing(engine, template):
    for source, line, reason in REJECTED:
        with pytest.raises(generators.GeneratorRejected) as rejected:
            generators.publish(engine, template, source, "gen.py", "")
        assert (rejected.value.line, source) == (line, source)
        assert reason in rejected.value.reason
        assert rejected.value.errors == [
            {"field": "source", "line": line, "error": rejected.value.reason}
        ]
        where = f"line {line}: " if line else ""
        assert str(rejected.value) == where + rejected.value.reason
    assert stored(engine, template) == []


def test_a_source_over_the_size_limit_is_rejected_and_nothing_is_stored(
    engine, template, monkeypatch
):
    monkeypatch.setenv("GENERATOR_MAX_BYTES", "1000")
    generators.publish(engine, template, GOOD, "gen.py", "")
    padded = GOOD + "# " + "é" * 500 + "\n"  # 1,000 characters of 2 bytes each
    with pytest.raises(generators.GeneratorRejected, match="over the 1000-byte limit") as rejected:
        generators.publish(engine, template, padded, "gen.py", "")
    assert rejected.value.line is None
    assert stored(engine, template) == [(1, True)]


def test_bad_fields_are_refused_by_name(engine, template):
    with pytest.raises(errors.InvalidInput, match="file_name"):
        generators.publish(engine, template, GOOD, "../evil.py", "")
    with pytest.raises(errors.InvalidInput, match="description"):
        generators.publish(engine, template, GOOD, "gen.py", ["not text"])
    with pytest.raises(errors.InvalidInput, match="not both"):
        generators.preview(engine, template, source=GOOD, version=1)
    with pytest.raises(errors.InvalidInput, match=r"member\.attributes"):
        generators.preview(engine, template, source=GOOD, member={"attributes": [1]})
    with pytest.raises(errors.NotFound, match="no active generator"):
        generators.preview(engine, template)
    assert stored(engine, template) == []


@needs_sandbox
def test_a_preview_returns_files_thumbnail_output_time_and_memory(engine, template):
    generators.publish(engine, template, IMAGE, "image.py", "")
    draft = generators.preview(
        engine,
        template,
        source=GOOD,
        member={"name": "Ana", "msisdn": "+12025550100", "attributes": {"offer": "2 for 1"}},
    )
    assert draft.ok and draft.error is None and draft.version is None
    [card] = draft.files
    assert (card.asset_type, card.name, card.content_type) == (
        "json",
        "card.json",
        "application/json",
    )
    assert card.data == b'{"name": "Ana", "offer": "2 for 1"}' and card.size == len(card.data)
    assert card.thumbnail_png is None
    assert draft.output == "card for Ana\n"
    assert draft.seconds > 0 and draft.peak_memory_mb and draft.peak_memory_mb > 1

    active = generators.preview(engine, template)  # the active version, the sample member
    assert active.ok and active.version == 1
    assert active.member == generators.SAMPLE_MEMBER
    [image] = active.files
    assert image.content_type == "image/png" and image.data.startswith(b"\x89PNG")
    assert png_size(image.thumbnail_png) == (240, 120)
    answer = active.as_dict()
    assert base64.b64decode(answer["files"][0]["thumbnail_png"]) == image.thumbnail_png


@needs_sandbox
def test_a_failing_generator_is_the_previews_result_with_only_its_own_traceback(engine, template):
    failed = generators.preview(engine, template, source=FAILING, file_name="offer.py")
    assert not failed.ok and failed.files == []
    assert failed.error == "ZeroDivisionError: division by zero at offer.py line 3"
    assert failed.traceback == [
        '  File "offer.py", line 7, in generate_asset',
        "    return helper(0)",
        '  File "offer.py", line 3, in helper',
        "    return 1 / value",
    ]
    assert failed.output == "about to fail\n"

    rejected = generators.preview(engine, template, source="def generate_asset(:\n")
    assert not rejected.ok and rejected.error.startswith("line 1: syntax error")


@needs_sandbox
def test_a_generator_that_never_returns_is_stopped_at_the_preview_time_limit(
    engine, template, monkeypatch
):
    monkeypatch.setenv("GENERATOR_PREVIEW_SECONDS", "2")
    source = (
        "def generate_asset(attributes, name, msisdn, temp_dir):\n    while True:\n        pass\n"
    )
    result = generators.preview(engine, template, source=source)
    assert not result.ok
    assert result.error == "timed out after 2 s (wall clock); worker replaced"
    assert result.seconds >= 2 and result.peak_memory_mb is None


@needs_sandbox
def test_a_generator_escaping_temp_dir_is_contained(engine, template, tmp_path, repo_root):
    """It tries to write beside its folder, into this test's folder and the checkout, and
    returns a path outside temp_dir: nothing lands on the host and the path is refused."""
    source = textwrap.dedent(
        """
        import os

        def generate_asset(attributes, name, msisdn, temp_dir):
            for target in attributes["targets"]:
                try:
                    with open(target, "w") as f:
                        f.write("escaped")
                    print("wrote", target)
                except OSError as error:
                    print("refused", target, error.strerror)
            os.symlink("/etc/passwd", os.path.join(temp_dir, "link.json"))
            return {"json": attributes["returned"]}
        """
    )
    targets = [
        str(tmp_path / "escaped.txt"),
        str(repo_root / "escaped.txt"),
        "../escaped.txt",
        "/etc/escaped.txt",
    ]
    for returned, reason in (
        ("/etc/passwd", "/etc/passwd is outside temp_dir"),
        ("../../etc/passwd", "../../etc/passwd is outside temp_dir"),
        ("link.json", "link.json goes through a symbolic link"),
    ):
        result = generators.preview(
            engine,
            template,
            source=source,
            member={
                "msisdn": "+12025550100",
                "attributes": {"targets": targets, "returned": returned},
            },
        )
        assert not result.ok and result.files == []
        assert result.error == f"json: {reason}" + (
            "; only files inside temp_dir are accepted" if "link" in reason else ""
        )
        # The checkout is read-only, or (a checkout under /tmp) not there at all.
        assert f"refused {targets[1]} " in result.output
        assert f"refused {targets[3]} Read-only file system" in result.output
    assert not (tmp_path / "escaped.txt").exists()
    assert not (repo_root / "escaped.txt").exists()


def cli(capsys, *argv: str) -> tuple[int, object, str]:
    code = main(["generators", *argv])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except ValueError:
        return code, out, err


@needs_sandbox
def test_the_cli_publishes_lists_rolls_back_and_previews_into_a_folder(
    capsys, engine, template, tmp_path
):
    draft = tmp_path / "card.py"
    draft.write_text(IMAGE)
    t = str(template)
    code, published, _ = cli(capsys, "publish", str(draft), "--template", t, "--description", "v1")
    assert code == 0 and published["version"] == 1 and published["file_name"] == "card.py"
    broken = tmp_path / "broken.py"
    broken.write_text("import os\ndef generate_asset(a, b, c):\n    pass\n")
    code, _, err = cli(capsys, "publish", str(broken), "--template", t)
    assert code == 1
    assert err == (
        "waflow: error: line 2: generate_asset(a, b, c) must take exactly four parameters:"
        " generate_asset(attributes, name, msisdn, temp_dir)\n"
    )
    draft.write_text(GOOD)
    assert cli(capsys, "publish", str(draft), "--template", t)[1]["version"] == 2
    code, listed, _ = cli(capsys, "list", "--template", t)
    assert [(v["version"], v["active"]) for v in listed] == [(2, True), (1, False)]
    assert cli(capsys, "activate", "1", "--template", t)[1]["active"] is True
    assert cli(capsys, "show", "2", "--template", t, "--source-only")[1] == GOOD

    out = tmp_path / "preview"
    code, result, _ = cli(capsys, "preview", "--template", t, "--out", str(out))
    assert code == 0 and result["ok"] and result["version"] == 1
    [image] = result["files"]
    assert image["path"] == str(out / "card.png") and image["data"] is None
    assert (out / "card.png").read_bytes().startswith(b"\x89PNG")
    assert png_size((out / "card.thumbnail.png").read_bytes()) == (240, 120)

    member = tmp_path / "ana.json"
    member.write_text(json.dumps({"name": "Ana", "msisdn": "+12025550100", "attributes": {}}))
    failing = tmp_path / "failing.py"
    failing.write_text(FAILING)
    code, result, err = cli(
        capsys, "preview", str(failing), "--template", t, "--member", str(member), "--out", str(out)
    )
    assert code == 1 and result["files"] == [] and result["member"]["name"] == "Ana"
    assert result["traceback"][-1] == "    return 1 / value"
    assert err == (
        "waflow: error: the generator failed:"
        " ZeroDivisionError: division by zero at failing.py line 3\n"
    )
