"""Which database and Supabase project portraitkit talks to, read from env and `.env`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import platformdirs
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from portraitkit.errors import ConfigurationError
from portraitkit.secretfile import read_or_create_secret

Mode = Literal["supabase", "postgres", "embedded"]


def _supabase_project_url(database_url: str | None) -> str | None:
    """The API URL of the Supabase project a connection string reaches: the direct host
    ``db.<ref>.supabase.co``, or the shared pooler (``*.pooler.supabase.com``) with the
    user ``<role>.<ref>`` (Supabase docs: guides/database/connecting-to-postgres)."""
    if not database_url:
        return None
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return None
    host, user = str(params.get("host") or ""), str(params.get("user") or "")
    direct = re.fullmatch(r"db\.([a-z0-9]+)\.supabase\.co", host)
    if direct:
        return f"https://{direct.group(1)}.supabase.co"
    pooled = re.fullmatch(r"[^.]+\.([a-z0-9]+)", user)
    if host.endswith(".pooler.supabase.com") and pooled:
        return f"https://{pooled.group(1)}.supabase.co"
    return None


def _default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir("portraitkit"))


def _env(name: str, field: str) -> AliasChoices:
    # Accept the env name and the field name, so `Settings(state_dir=...)` works in code.
    return AliasChoices(name, field)


class Settings(BaseSettings):
    """Connection settings; `mode` says which of the three setups they describe."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL", "database_url"))
    listen_url: str | None = Field(
        None,
        validation_alias=_env("PORTRAITKIT_LISTEN_URL", "listen_url"),
        description="A session connection for LISTEN/NOTIFY wake-ups when DATABASE_URL goes "
        "through a transaction-mode pooler, which cannot carry them. Unset: DATABASE_URL, "
        "or for Supabase's transaction pooler its session mode on the same host.",
    )
    supabase_url: str | None = Field(None, validation_alias=_env("SUPABASE_URL", "supabase_url"))
    # Supabase's current keys (sb_publishable_..., sb_secret_...) or the legacy JWT keys,
    # whichever is set: the publishable one acts for users, the secret one for the worker.
    supabase_anon_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "SUPABASE_PUBLISHABLE_KEY", "SUPABASE_ANON_KEY", "supabase_anon_key"
        ),
    )
    supabase_service_role_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "SUPABASE_SECRET_KEY", "SUPABASE_SERVICE_ROLE_KEY", "supabase_service_role_key"
        ),
    )
    supabase_jwt_secret: SecretStr | None = Field(
        None,
        validation_alias=_env("SUPABASE_JWT_SECRET", "supabase_jwt_secret"),
        description="The project's legacy HS256 JWT secret, for servers that verify user "
        "tokens signed with it (newer tokens are checked against the project's JWKS).",
    )
    jwks_url: str | None = Field(
        None,
        validation_alias=_env("PORTRAITKIT_JWKS_URL", "jwks_url"),
        description="Where the public keys that sign user tokens are published. Unset: "
        "<SUPABASE_URL>/auth/v1/.well-known/jwks.json on Supabase, or for a DATABASE_URL on "
        "a Supabase host (direct or pooler) its project's; none otherwise.",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        validation_alias=_env("PORTRAITKIT_STATE_DIR", "state_dir"),
    )
    jwt_secret: SecretStr | None = Field(
        None, validation_alias=_env("PORTRAITKIT_JWT_SECRET", "jwt_secret")
    )
    generator: str | None = Field(
        None,
        validation_alias=_env("PORTRAITKIT_GENERATOR", "generator"),
        description="Render every style with this generator (local, http, noop) instead of "
        "the one the styles catalogue names.",
    )
    image_api_url: str = Field(
        "https://api.replicate.com",
        validation_alias=_env("PORTRAITKIT_IMAGE_API_URL", "image_api_url"),
    )
    image_api_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "PORTRAITKIT_IMAGE_API_TOKEN", "REPLICATE_API_TOKEN", "image_api_token"
        ),
    )

    @property
    def mode(self) -> Mode:
        """supabase: a Supabase project; postgres: DATABASE_URL only; embedded: neither.

        Raises ConfigurationError for half-made setups rather than guessing.
        """
        has_key = bool(self.supabase_anon_key or self.supabase_service_role_key)
        if self.supabase_url:
            if not has_key:
                raise ConfigurationError(
                    "SUPABASE_URL is set but no key is: set SUPABASE_PUBLISHABLE_KEY (users) "
                    "or SUPABASE_SECRET_KEY (the worker), or unset SUPABASE_URL"
                )
            return "supabase"
        if has_key:
            raise ConfigurationError(
                "a Supabase key is set but SUPABASE_URL is not: set SUPABASE_URL, or unset the key"
            )
        if self.database_url:
            return "postgres"
        return "embedded"

    def signing_keys_url(self) -> str | None:
        """The JWKS that user tokens may be signed with (see ``jwks_url``)."""
        if self.jwks_url:
            return self.jwks_url
        project = self.supabase_url or _supabase_project_url(self.database_url)
        if project:
            return project.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None

    def jwt_secret_value(self) -> str:
        """The secret that signs local JWTs (direct-Postgres modes).

        PORTRAITKIT_JWT_SECRET when set (use the Supabase project's JWT secret when
        DATABASE_URL points at one, so the tokens are valid there too); otherwise one is
        made once and kept in the state directory.
        """
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return read_or_create_secret(self.state_dir / "jwt_secret", nbytes=32)
