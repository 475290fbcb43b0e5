"""One typed Settings object, read from `BROADCAST_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives import serialization
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broadcast.protocol.links import ice_server_links

__all__ = ["ENV_PREFIX", "SECRETS", "Settings", "describe", "load_settings"]

ENV_PREFIX = "BROADCAST_"

CommaList = Annotated[list[str], NoDecode]
STREAM = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as broadcast.http.common.STREAM_NAME
SECRETS = ("publish_token", "viewer_token", "turn_secret", "cluster_secret", "jwt_secret")


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
    # `stream=key` pairs: a key admits publishing its stream only.
    publish_keys: CommaList = []
    # HS256 JWTs; RFC 7518 §3.2: a key at least as long as the hash (32 bytes)
    jwt_secret: str | None = Field(default=None, min_length=32)
    jwt_public_key_file: str | None = None  # PEM: EdDSA (Ed25519), ES256 or RS256 JWTs
    jwt_viewers: bool = False  # viewers need a JWT with role "view" (or the viewer token)
    ice_servers: CommaList = []
    turn_secret: str | None = None
    turn_ttl: int = Field(default=86400, gt=0)
    udp_port: int | None = Field(default=None, ge=1, le=65535)
    record_dir: str | None = None  # recordings go here (none: recording is off)
    record_all: bool = True  # every stream is recorded; false: only on request (API)
    # auto: VP8 -> WebM, H.264 -> Matroska; mkv: Matroska; mp4: fragmented MP4 (H.264)
    record_format: Literal["auto", "mkv", "mp4"] = "auto"
    record_segment_seconds: float = Field(default=600.0, ge=1)  # a new file this often
    record_segment_bytes: int = Field(default=2**31, ge=10_000)  # ... or this large
    # Data channels (RFC 8831): a publisher's messages fan out to every viewer.
    data_max_message_bytes: int = Field(default=16384, ge=1, le=262144)
    data_rate: float = Field(default=100.0, ge=0)  # messages a second per sender (0: no limit)
    data_burst: int = Field(default=1000, ge=1)
    data_viewer_messages: bool = False  # viewers may send to the publisher
    data_buffer_bytes: int = Field(default=1_048_576, ge=1024)  # queued for one viewer
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
    # Per client address, on POST/PATCH/DELETE: requests a second (0: no limit), burst.
    rate_limit: float = Field(default=50.0, ge=0)
    rate_burst: int = Field(default=200, ge=1)
    trusted_proxies: CommaList = []  # their X-Forwarded-For names the client
    # 0: no limit. Viewers exclude other nodes' relay sessions.
    max_publishers: int = Field(default=0, ge=0)
    max_viewers: int = Field(default=0, ge=0)
    max_viewers_per_stream: int = Field(default=0, ge=0)
    max_handshakes: int = Field(default=100, ge=1)  # sessions still doing ICE/DTLS
    max_body_bytes: int = Field(default=65536, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one object per line; console: readable lines; auto: json unless a terminal
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator(
        "ice_servers",
        "public_ips",
        "ice_addresses",
        "allow_origins",
        "publish_keys",
        "trusted_proxies",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "publish_token",
        "viewer_token",
        "turn_secret",
        "cluster_secret",
        "jwt_secret",
        mode="before",
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

    @field_validator("publish_keys")
    @classmethod
    def _check_publish_keys(cls, value: list[str]) -> list[str]:
        streams = set()
        for pair in value:
            stream, eq, key = pair.partition("=")
            if not eq or not STREAM.fullmatch(stream) or len(key) < 8:
                raise ValueError(
                    "BROADCAST_PUBLISH_KEYS holds stream=key pairs (stream names of "
                    "A-Z a-z 0-9 _ -, keys of at least 8 characters)"
                )
            if stream in streams:
                raise ValueError(f"stream {stream!r} has two publish keys")
            streams.add(stream)
        return value

    @field_validator("jwt_public_key_file")
    @classmethod
    def _check_public_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                serialization.load_pem_public_key(Path(value).read_bytes())
            except (OSError, ValueError, TypeError) as exc:
                raise ValueError(f"{value!r} is not a readable PEM public key: {exc}") from None
        return value

    @property
    def publish_key_map(self) -> dict[str, str]:
        return dict(pair.split("=", 1) for pair in self.publish_keys)

    @field_validator("public_ips", "ice_addresses", "trusted_proxies")
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
        elif name == "publish_keys":
            text = ",".join(f"{pair.partition('=')[0]}=<set>" for pair in value)
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
