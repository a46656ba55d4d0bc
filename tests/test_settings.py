"""Settings say which setup is meant, and refuse half-made ones."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from portraitkit.database.connection import listen_url
from portraitkit.errors import ConfigurationError
from portraitkit.settings import Settings

ENV = (
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "PORTRAITKIT_STATE_DIR",
    "PORTRAITKIT_JWT_SECRET",
    "PORTRAITKIT_LISTEN_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_nothing_set_means_embedded() -> None:
    assert Settings().mode == "embedded"


def test_database_url_means_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/app")

    assert Settings().mode == "postgres"


def test_supabase_url_and_a_key_mean_supabase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "key")

    assert Settings().mode == "supabase"


def test_supabase_url_without_a_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")

    with pytest.raises(ConfigurationError, match="SUPABASE_PUBLISHABLE_KEY"):
        _ = Settings().mode


def test_a_key_without_supabase_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_ANON_KEY", "key")

    with pytest.raises(ConfigurationError, match="SUPABASE_URL"):
        _ = Settings().mode


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://from-dotenv/app\n")

    assert Settings().database_url == "postgresql://from-dotenv/app"


def test_state_dir_from_env_and_from_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORTRAITKIT_STATE_DIR", str(tmp_path / "env"))

    assert Settings().state_dir == tmp_path / "env"
    assert Settings(state_dir=tmp_path / "code").state_dir == tmp_path / "code"


def test_embedded_jwt_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)

    secret = settings.jwt_secret_value()

    assert len(secret) == 64
    assert Settings(state_dir=tmp_path).jwt_secret_value() == secret
    assert stat.S_IMODE((tmp_path / "jwt_secret").stat().st_mode) == 0o600


def test_jwt_secret_from_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAITKIT_JWT_SECRET", "from-env")

    assert Settings().jwt_secret_value() == "from-env"


POOLER = "postgresql://postgres.abcdefgh:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres"


def test_listen_uses_the_session_mode_of_supabases_transaction_pooler() -> None:
    session = conninfo_to_dict(listen_url(Settings(), POOLER))
    assert session == {**conninfo_to_dict(POOLER), "port": "5432"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres",  # direct
        "postgresql://postgres.abcdefgh:pw@aws-0-eu-west-1.pooler.supabase.com:5432/postgres",
        "postgresql://app:pw@pgbouncer.internal:6543/app",  # someone else's port 6543
    ],
)
def test_listen_uses_the_database_url_itself_otherwise(url: str) -> None:
    assert listen_url(Settings(), url) == url


def test_an_explicit_listen_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAITKIT_LISTEN_URL", "postgresql://postgres:pw@db.example:5432/app")
    assert listen_url(Settings(), POOLER) == "postgresql://postgres:pw@db.example:5432/app"


def test_supabases_current_key_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    monkeypatch.setenv("SUPABASE_PUBLISHABLE_KEY", "sb_publishable_abc")
    monkeypatch.setenv("SUPABASE_SECRET_KEY", "sb_secret_xyz")
    settings = Settings()
    assert settings.mode == "supabase"
    assert settings.supabase_anon_key is not None
    assert settings.supabase_anon_key.get_secret_value() == "sb_publishable_abc"
    assert settings.supabase_service_role_key is not None
    assert settings.supabase_service_role_key.get_secret_value() == "sb_secret_xyz"
    assert settings.signing_keys_url() == "https://x.supabase.co/auth/v1/.well-known/jwks.json"


def test_the_legacy_key_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    monkeypatch.setenv("SUPABASE_ANON_KEY", "legacy-anon")
    settings = Settings()
    assert settings.supabase_anon_key is not None
    assert settings.supabase_anon_key.get_secret_value() == "legacy-anon"
