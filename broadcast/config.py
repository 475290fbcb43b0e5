"""One typed Settings object, read from `BROADCAST_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broadcast.protocol.links import ice_server_links

__all__ = ["ENV_PREFIX", "SECRETS", "Settings", "describe", "load_settings"]

ENV_PREFIX = "BROADCAST_"

CommaList = Annotated[list[str], NoDecode]
SECRETS = ("publish_token", "viewer_token", "turn_secret", "cluster_secret")


class Settings(BaseSettings):
    """Every knob of a node. Documented in README.md and DESIGN.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    node_id: str = Field(default_factory=socket.gethostname)
    redis_url: str | None = None
    cluster_mode: Literal["relay", "redirect"] = "relay"
    # Shared by the nodes of one cluster: an edge's upstream WHEP session authenticates
    # with it (it is accepted wherever the viewer token is).
    cluster_secret: str | None = None
    relay_grace: float = Field(default=10.0, ge=0)  # upstream kept this long without viewers
    relay_max_depth: int = Field(default=3, ge=1, le=16)  # relay hops a stream may cross
    # Upstream sessions one node serves per stream before new edges pull from edges.
    relay_fanout: int = Field(default=8, ge=1, le=1000)
    publish_token: str | None = None
    viewer_token: str | None = None
    ice_servers: CommaList = []
    turn_secret: str | None = None
    turn_ttl: int = Field(default=86400, gt=0)
    udp_port: int | None = Field(default=None, ge=1, le=65535)
    record_dir: str | None = None
    # The CPUs this process may run on (a container's cpuset), not the machine's count.
    workers: int = Field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1, ge=1)
    public_ips: CommaList = []
    ice_addresses: CommaList = []
    drain_timeout: float = Field(default=3600.0, ge=0)
    allow_origins: CommaList = ["*"]
    wait_timeout: float = Field(default=600.0, gt=0)
    require_live: bool = False
    publisher_grace: float = Field(default=30.0, ge=0)
    # bit/s a publisher's bandwidth estimate starts at (x-google-start-bitrate); 0: none
    publisher_start_bitrate: int = Field(default=1_500_000, ge=0, le=100_000_000)
    connect_timeout: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=131072, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one object per line; console: readable lines; auto: json unless a terminal
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("ice_servers", "public_ips", "ice_addresses", "allow_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "publish_token", "viewer_token", "turn_secret", "cluster_secret", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `BROADCAST_PUBLISH_TOKEN=` (empty) means no token, not "the empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _relay_needs_the_secret(self) -> Settings:
        if self.redis_url and self.cluster_mode == "relay" and self.cluster_secret is None:
            raise ValueError(
                "BROADCAST_CLUSTER_MODE=relay with BROADCAST_REDIS_URL needs "
                "BROADCAST_CLUSTER_SECRET (the same on every node): edges authenticate their "
                "upstream sessions with it"
            )
        return self

    @field_validator("public_ips", "ice_addresses")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value

    @field_validator("ice_servers")
    @classmethod
    def _check_ice_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        # Fail at start, not on every request, if a URL cannot go in a Link header.
        ice_server_links(value, turn_secret="check", turn_ttl=1, now=0.0, user="check")
        return value

    @model_validator(mode="after")
    def _normalise_public_url(self) -> Settings:
        if self.public_url is not None:
            self.public_url = self.public_url.rstrip("/")
        return self

    @property
    def base_url(self) -> str:
        """The URL other nodes and clients use to reach this node."""
        return self.public_url or f"http://{self.host}:{self.port}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment; unknown `BROADCAST_*` variables fail fast."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}; see README for the list")
    return Settings(**overrides)


def describe(settings: Settings) -> list[str]:
    """The effective settings as `BROADCAST_NAME=value` lines, secrets shown only as set
    or not, and a password in the Redis URL left out."""
    lines = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRETS:
            text = "" if value is None else "<set>"
        elif isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, bool):
            text = str(value).lower()
        elif value is None:
            text = ""
        elif name == "redis_url":
            scheme, sep, rest = str(value).partition("://")
            netloc, slash, path = rest.partition("/")
            text = f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"
        else:
            text = str(value)
        lines.append(f"{ENV_PREFIX}{name.upper()}={text}")
    return lines
