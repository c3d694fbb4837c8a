"""Every campaign status change goes through the status machine: `resources/campaigns.py`
is the one module whose SQL writes `campaigns.status`; everything else calls
`set_campaign_status` (or its set-based `set_campaigns_status`)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("resources", "assets_defs", "webhook_app", "pipelines")
OWNER = Path("resources/campaigns.py")

_UPDATE = re.compile(
    r"\bUPDATE\s+campaigns\b(?:\s+(?:AS\s+)?(?!SET\b)\w+)?\s+SET\b(?P<set>.*?)"
    r"(?:\bWHERE\b|\bFROM\b|\bRETURNING\b|$)",
    re.IGNORECASE | re.DOTALL,
)
_STATUS = re.compile(r"(?<!\w)(?:\w+\.)?status\s*=", re.IGNORECASE)


def writes_campaign_status(sql: str) -> bool:
    return any(_STATUS.search(m["set"]) for m in _UPDATE.finditer(sql))


def _sql_texts(tree: ast.AST) -> list[str]:
    """The module's string literals (adjacent ones are already one), and each f-string's
    literal parts joined."""
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            texts.append(
                " ".join(
                    part.value
                    for part in node.values
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                )
            )
    return texts


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("UPDATE campaigns SET status = :s WHERE id = :c", True),
        ("UPDATE campaigns c SET status_reason = NULL, c.status = 'failed' WHERE", True),
        ("update campaigns AS c set paused_from = :p, status='paused'", True),
        ("UPDATE campaigns SET asset_generation_status = 'running' WHERE", False),
        ("UPDATE campaigns SET paused_from = NULL WHERE status = 'paused'", False),
        ("UPDATE campaign_runs SET status = 'paused' WHERE", False),
    ],
)
def test_the_check_finds_status_writes(sql, writes):
    assert writes_campaign_status(sql) is writes


def test_only_the_campaigns_module_writes_a_campaigns_status():
    writers = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.relative_to(ROOT) != OWNER
        and any(writes_campaign_status(t) for t in _sql_texts(ast.parse(path.read_text())))
    )
    assert writers == [], f"write campaigns.status through set_campaign_status: {writers}"
    assert any(writes_campaign_status(t) for t in _sql_texts(ast.parse((ROOT / OWNER).read_text())))
