import pytest

from resources import settings


def test_the_readme_documents_every_setting(repo_root):
    readme = (repo_root / "README.md").read_text()
    missing = [s.name for s in settings.SETTINGS if f"| `{s.name}` |" not in readme]
    assert missing == []


def test_unset_and_empty_settings_fall_back_to_their_default(monkeypatch):
    monkeypatch.delenv("WHATSAPP_API_VERSION", raising=False)
    assert settings.get("WHATSAPP_API_VERSION") == "v25.0"
    monkeypatch.setenv("WHATSAPP_API_VERSION", "")
    assert settings.get("WHATSAPP_API_VERSION") == "v25.0"
    monkeypatch.setenv("WHATSAPP_API_VERSION", "v26.0")
    assert settings.get("WHATSAPP_API_VERSION") == "v26.0"


def test_production_does_not_accept_defaults_for_required_settings(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv("ADMIN_API_TOKEN", raising=False)
    with pytest.raises(settings.MissingSetting, match="ADMIN_API_TOKEN"):
        settings.check_production(("ADMIN_API_TOKEN",))
    monkeypatch.setenv("APP_ENV", "development")
    settings.check_production(("ADMIN_API_TOKEN",))


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("", int, 8),  # unset or empty: the documented default
        ("12", int, 12),
        ("2.5", float, 2.5),
        ("twelve", int, "SENDER_LANES must be a whole number"),
        ("2.5", int, "SENDER_LANES must be a whole number"),
        ("nan", float, "SENDER_LANES must be between 1 and 64"),
        ("0", int, "SENDER_LANES must be between 1 and 64"),
        ("65", int, "SENDER_LANES must be between 1 and 64"),
    ],
)
def test_a_number_setting_is_parsed_and_bounded_or_refused_by_name(
    monkeypatch, value, kind, expected
):
    monkeypatch.setenv("SENDER_LANES", value)
    if isinstance(expected, str):
        with pytest.raises(settings.InvalidSetting, match=expected) as refused:
            settings.number("SENDER_LANES", kind, 1, 64)
        assert value not in str(refused.value).replace("SENDER_LANES", "")
    else:
        assert settings.number("SENDER_LANES", kind, 1, 64) == expected
