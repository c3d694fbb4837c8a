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
