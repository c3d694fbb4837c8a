from dataclasses import dataclass

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
    with pytest.raises(settings.MissingSetting, match=r"sender cannot start: .*ADMIN_API_TOKEN"):
        settings.check_production(("ADMIN_API_TOKEN",), "sender")
    assert settings.get("ADMIN_API_TOKEN") is None  # the dev token is for development only
    monkeypatch.setenv("APP_ENV", "development")
    settings.check_production(("ADMIN_API_TOKEN",), "sender")
    assert settings.get("ADMIN_API_TOKEN") == "dev-admin-token"


@pytest.mark.parametrize(
    ("app_env", "database_url", "expected"),
    [
        ("development", "postgresql://db.example/x", "development"),
        ("production", "", "production"),
        ("", "", "development"),  # the embedded stack
        ("", "postgresql://db.example/x", "production"),  # any other database
    ],
)
def test_unset_app_env_is_development_only_on_the_embedded_stack(
    monkeypatch, app_env, database_url, expected
):
    monkeypatch.setenv("APP_ENV", app_env)
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert settings.environment() == expected


@pytest.mark.parametrize("value", ["prod-eu", "Production", "staging", "live"])
def test_an_app_env_that_is_no_environment_is_refused(monkeypatch, value):
    monkeypatch.setenv("APP_ENV", value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(settings.InvalidSetting, match="APP_ENV must be") as refused:
        settings.check_production(("ADMIN_API_TOKEN",), "webhook app")
    assert value not in str(refused.value)


def test_every_missing_setting_is_named_on_one_line(monkeypatch):
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/x")
    for name in ("WHATSAPP_APP_SECRET", "ADMIN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(settings.MissingSetting) as refused:
        settings.check_production(
            ("DATABASE_URL", "WHATSAPP_APP_SECRET", "ADMIN_API_TOKEN"), "webhook app"
        )
    message = str(refused.value)
    assert message.startswith("webhook app cannot start: missing required settings")
    assert "WHATSAPP_APP_SECRET, ADMIN_API_TOKEN" in message
    assert "DATABASE_URL is set and APP_ENV is not" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SENDER_LANES", "", 8),  # unset or empty: the documented default
        ("SENDER_LANES", "12", 12),
        ("MEDIA_FAILURE_THRESHOLD", "0.25", 0.25),
        ("SENDER_LANES", "twelve", "SENDER_LANES must be a whole number"),
        ("SENDER_LANES", "2.5", "SENDER_LANES must be a whole number"),
        ("SENDER_LANES", "0", "SENDER_LANES must be between 1 and 64"),
        ("SENDER_LANES", "65", "SENDER_LANES must be between 1 and 64"),
        ("MEDIA_FAILURE_THRESHOLD", "nan", "MEDIA_FAILURE_THRESHOLD must be between 0 and 1"),
        ("MEDIA_FAILURE_THRESHOLD", "a tenth", "MEDIA_FAILURE_THRESHOLD must be a number"),
        ("SENDER_RETRY_BASE_SECONDS", "-1", "SENDER_RETRY_BASE_SECONDS must be at least 0"),
    ],
)
def test_a_number_setting_is_parsed_and_bounded_or_refused_by_name(
    monkeypatch, name, value, expected
):
    monkeypatch.setenv(name, value)
    if isinstance(expected, str):
        with pytest.raises(settings.InvalidSetting, match=expected) as refused:
            settings.number(name)
        assert value not in str(refused.value).replace(name, "")
    else:
        assert settings.number(name) == expected


def test_every_number_setting_accepts_its_own_default(monkeypatch):
    # Without a default (MAX_CONCURRENT_GENERATIONS) the reader computes one.
    numbers = [s for s in settings.SETTINGS if s.kind is not None and s.default is not None]
    for setting in numbers:
        monkeypatch.delenv(setting.name, raising=False)
        assert isinstance(settings.number(setting.name), setting.kind), setting.name
    assert len(numbers) >= 30


def test_a_group_of_settings_reads_each_field_from_its_setting_when_loaded(monkeypatch):
    @dataclass(frozen=True)
    class Group:
        lanes: int = settings.setting("SENDER_LANES")
        words: frozenset[str] = settings.setting("OPT_IN_WORDS", lambda v: frozenset(v.split(",")))
        workers: int = settings.setting("MAX_CONCURRENT_GENERATIONS", default_factory=lambda: 99)

    for name in ("SENDER_LANES", "OPT_IN_WORDS", "MAX_CONCURRENT_GENERATIONS"):
        monkeypatch.delenv(name, raising=False)
    assert settings.load(Group) == Group() == Group(8, frozenset({"START"}), 99)
    monkeypatch.setenv("SENDER_LANES", "12")
    monkeypatch.setenv("OPT_IN_WORDS", "GO,YES")
    monkeypatch.setenv("MAX_CONCURRENT_GENERATIONS", "3")
    assert settings.load(Group) == Group(12, frozenset({"GO", "YES"}), 3)
    monkeypatch.setenv("SENDER_LANES", "0")
    with pytest.raises(settings.InvalidSetting, match="SENDER_LANES must be between 1 and 64"):
        settings.load(Group)
