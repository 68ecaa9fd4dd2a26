"""Typed settings from the environment, prefix `WAFLEET_` (pydantic-settings).

`load_settings()` is the only way entry points read them: a missing or invalid value raises
`SettingsError` whose text is one line naming the variable and what is wrong, which the CLI
prints before exiting non-zero.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

ENV_PREFIX = "WAFLEET_"
EMBEDDED = "embedded"  # broker/redis value that means: run the embedded Redis (DESIGN §6)
MASTER_KEY_BYTES = 32
# WhatsApp's Noise root key (SPEC §3.6); the simulator's differs and is set per deployment.
WHATSAPP_ROOT_KEY_HEX = "142375574d0a587166aae71ebe516437c4a28b73e3695c6ce1f7f9545da8ee6b"
WHATSAPP_WS_URL = "wss://web.whatsapp.com/ws/chat"  # SPEC §2.1


class SettingsError(Exception):
    """A setting is missing or invalid; `str()` is one line: `WAFLEET_X: what is wrong`."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def decode_master_key(text: str) -> bytes:
    """A master key is 32 bytes given as 64 hex digits or as base64 (standard or url-safe)."""
    text = text.strip()
    try:
        if len(text) == 2 * MASTER_KEY_BYTES:
            key = bytes.fromhex(text)
        else:
            key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("must be 32 bytes as 64 hex digits or base64") from exc
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"must decode to {MASTER_KEY_BYTES} bytes, got {len(key)}")
    return key


class Settings(BaseSettings):
    """Every setting of every wafleet process. Defaults are the embedded, zero-install mode."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False, frozen=True
    )

    # --- storage -------------------------------------------------------------------------
    data_dir: Path = Field(default=Path(".wafleet"), description="embedded mode's files")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty = SQLite file in data_dir"
    )
    master_key: SecretStr | None = Field(default=None, description="32-byte key, hex or base64")
    previous_master_keys: SecretStr | None = Field(
        default=None, description="comma-separated older master keys, still accepted to unwrap"
    )

    # --- queues and buses ----------------------------------------------------------------
    broker_url: str = Field(default=EMBEDDED, description="Celery broker URL or 'embedded'")
    redis_url: str = Field(default=EMBEDDED, description="leases/events Redis or 'embedded'")
    redis_prefix: str = Field(default="wafleet", description="prefix of every Redis key")

    # --- outbound behaviour --------------------------------------------------------------
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        default=(5, 15, 30, 60, 120, 300), description="seconds between attempts (DESIGN §3.5)"
    )
    retry_jitter: float = Field(default=0.2, ge=0, lt=1, description="± fraction of each delay")
    max_attempts: int = Field(default=7, ge=1, description="attempts before `failed`")
    pacing_min_gap: float = Field(default=0.0, ge=0, description="seconds between sends, low end")
    pacing_max_gap: float = Field(default=0.0, ge=0, description="high end (≤ min_gap: fixed gap)")
    pacing_gap_jitter: float = Field(default=0.0, ge=0, description="± seconds on the gap")
    pacing_rate: float = Field(default=1.0, gt=0, description="token bucket: messages/second")
    pacing_burst: int = Field(default=20, ge=1, description="token bucket: burst size")
    park_expiry: float = Field(
        default=0.0, ge=0, description="expire parked sends after s; 0=never"
    )
    outbox_rescan: float = Field(
        default=300.0, gt=0, description="s between an idle actor's safety rescans (±20%)"
    )

    # --- inbound -------------------------------------------------------------------------
    inbound_batch_size: int = Field(
        default=100, ge=1, le=1000, description="messages per wafleet.route_inbound_batch task"
    )
    inbound_batch_linger: float = Field(
        default=0.015, ge=0, le=1, description="s a session waits to fill an inbound batch"
    )

    # --- fleet ---------------------------------------------------------------------------
    lease_ttl: float = Field(default=30.0, gt=0, description="seconds an instance lease lives")
    lease_renew: float = Field(default=10.0, gt=0, description="seconds between renewals")
    qr_rounds: int = Field(default=3, ge=1, description="QR rounds before `qr-exhausted`")
    member_ttl: float = Field(default=15.0, gt=0, description="seconds a silent worker stays live")
    heartbeat_interval: float = Field(default=3.0, gt=0, description="worker heartbeat period")
    rebalance_interval: float = Field(default=2.0, gt=0, description="assignment check period")
    session_stagger: float = Field(default=0.05, ge=0, description="s between session starts")
    link_handover_grace: float = Field(
        default=120.0, ge=0, description="s a linking session stays with its owner on rebalance"
    )

    # --- webhooks ------------------------------------------------------------------------
    webhook_allow_private: bool = Field(
        default=False, description="allow loopback/private webhook targets (SSRF guard off)"
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="seconds per HTTP attempt")
    webhook_max_attempts: int = Field(default=10, ge=1, description="attempts before `dead`")
    webhook_max_inflight: int = Field(default=2, ge=1, description="concurrent posts/endpoint")

    # --- media sends ---------------------------------------------------------------------
    media_allow_private: bool = Field(
        default=False, description="allow loopback/private media URLs (SSRF guard off)"
    )
    media_fetch_timeout: float = Field(default=30.0, gt=0, description="s to fetch a media URL")

    # --- WhatsApp ------------------------------------------------------------------------
    wa_server_url: str = Field(default=WHATSAPP_WS_URL)
    wa_root_key: str = Field(default=WHATSAPP_ROOT_KEY_HEX, description="Noise root key, hex")
    wa_version: str = Field(default="", description="override the app version, e.g. 2.3000.1")
    wa_prekey_count: int = Field(
        default=812, ge=5, le=2000, description="one-time prekeys uploaded at first login"
    )

    # --- metrics -------------------------------------------------------------------------
    session_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="session worker /metrics port; 0 = off"
    )
    session_metrics_host: str = Field(
        default="127.0.0.1", description="session worker /metrics address (0.0.0.0 in a pod)"
    )

    # --- gateway and logging -------------------------------------------------------------
    gateway_host: str = Field(default="127.0.0.1")
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    admin_key: SecretStr | None = Field(
        default=None, description="bearer key of the gateway's /v1/tenants admin API; unset = off"
    )
    gateway_rate_limit: int = Field(
        default=600, ge=0, description="requests per API key per window; 0 = unlimited"
    )
    gateway_rate_window: float = Field(default=60.0, gt=0, description="rate-limit window, s")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not parts:
                raise ValueError("must list at least one delay, e.g. 5,15,30")
            return tuple(parts)
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _positive_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("delays must be positive seconds, e.g. 5,15,30")
        return value

    @field_validator("master_key")
    @classmethod
    def _check_master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_master_key(value.get_secret_value())
        return value

    @field_validator("previous_master_keys")
    @classmethod
    def _check_previous(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for part in value.get_secret_value().split(","):
                if part.strip():
                    decode_master_key(part)
        return value

    @field_validator("wa_root_key")
    @classmethod
    def _check_root_key(cls, value: str) -> str:
        try:
            raw = bytes.fromhex(value)
        except ValueError as exc:
            raise ValueError("must be 64 hex digits") from exc
        if len(raw) != 32:
            raise ValueError("must be 64 hex digits (32 bytes)")
        return value.lower()

    @field_validator("database_url", "broker_url", "redis_url")
    @classmethod
    def _no_blank_scheme(cls, value: str) -> str:
        value = value.strip()
        if value and value != EMBEDDED and "://" not in value and not value.startswith("sqlite:"):
            raise ValueError("must be a URL such as postgresql+psycopg://user@host/db")
        return value

    @field_validator("lease_renew")
    @classmethod
    def _renew_before_expiry(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("lease_ttl")
        if isinstance(ttl, float) and value >= ttl:
            raise ValueError(f"must be shorter than {ENV_PREFIX}LEASE_TTL ({ttl:g} s)")
        return value

    # --- derived values ------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'wafleet.sqlite3').resolve()}"

    def master_keys(self) -> tuple[bytes, tuple[bytes, ...]]:
        """(current master key, previous keys). Raises SettingsError if no key is set."""
        if self.master_key is None:
            raise SettingsError(
                f"{ENV_PREFIX}MASTER_KEY",
                "not set; generate one with `wafleet keys generate` and export it",
            )
        current = decode_master_key(self.master_key.get_secret_value())
        previous: tuple[bytes, ...] = ()
        if self.previous_master_keys is not None:
            previous = tuple(
                decode_master_key(p)
                for p in self.previous_master_keys.get_secret_value().split(",")
                if p.strip()
            )
        return current, previous


def load_settings(**overrides: object) -> Settings:
    """Read the environment; turn the first validation problem into one-line `SettingsError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SourceError as exc:  # a value pydantic-settings could not even parse
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else "settings"
        raise SettingsError(f"{ENV_PREFIX}{field.upper()}", "cannot be parsed") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else "settings"
        variable = f"{ENV_PREFIX}{field.upper()}"
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        given = first.get("input")
        if field in {"master_key", "previous_master_keys", "admin_key"} or not isinstance(
            given, str | int
        ):
            raise SettingsError(variable, message) from None
        raise SettingsError(variable, f"{message} (got {given!r})") from None
