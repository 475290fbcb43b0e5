"""Settings: the commented sample loads, comma lists parse, unknown keys fail fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from broadcast.config import Settings, load_settings

SAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def sample_values() -> dict[str, str]:
    values = {}
    for line in SAMPLE.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and "=" in line and line[1:].strip().startswith("BROADCAST_"):
            line = line[1:].strip()  # commented-out examples must be valid too
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_sample_lists_every_setting_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    values = sample_values()
    assert {k.removeprefix("BROADCAST_").lower() for k in values} == set(Settings.model_fields)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.ice_servers[0] == "stun:stun.example.com:3478"
    assert settings.allow_origins == ["*"]


def test_defaults_without_environment() -> None:
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.base_url == "http://127.0.0.1:8080"
    assert settings.redis_url is None and settings.wait_timeout == 600
    assert not settings.require_live and settings.cluster_mode == "relay"


def test_unknown_setting_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADCAST_VIEWERS_TOKEN", "typo")
    with pytest.raises(ValueError, match="BROADCAST_VIEWERS_TOKEN"):
        load_settings()


def test_ice_server_urls_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADCAST_ICE_SERVERS", "http://not-ice")
    with pytest.raises(ValidationError):
        load_settings()


def test_empty_tokens_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADCAST_PUBLISH_TOKEN", "")
    monkeypatch.setenv("BROADCAST_VIEWER_TOKEN", "  ")
    settings = load_settings()
    assert settings.publish_token is None and settings.viewer_token is None


def test_a_relaying_cluster_needs_the_cluster_secret() -> None:
    with pytest.raises(ValidationError, match="BROADCAST_CLUSTER_SECRET"):
        Settings(redis_url="redis://127.0.0.1:6379/0")
    assert Settings(redis_url="redis://r:6379/0", cluster_secret="s").cluster_secret == "s"
    assert Settings(redis_url="redis://r:6379/0", cluster_mode="redirect").cluster_secret is None


def test_public_and_ice_addresses_must_be_ip_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADCAST_PUBLIC_IPS", "203.0.113.7, example.com")
    with pytest.raises(ValueError, match=r"'example\.com' is not an IP address"):
        load_settings()
    monkeypatch.setenv("BROADCAST_PUBLIC_IPS", "203.0.113.7,2001:db8::1")
    assert load_settings().public_ips == ["203.0.113.7", "2001:db8::1"]
