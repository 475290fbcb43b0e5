"""The `broadcast` command."""

from __future__ import annotations

import click
import uvicorn
from pydantic import ValidationError

from broadcast import __version__, logs
from broadcast.app import create_app
from broadcast.config import Settings, describe, load_settings
from broadcast.drain import DrainingServer
from broadcast.workers import Layout, run_workers

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="broadcast")
def main() -> None:
    """WHIP/WHEP live broadcast server."""


def _settings(host: str | None, port: int | None) -> Settings:
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        return load_settings(**overrides)
    except (ValidationError, ValueError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


_host = click.option(
    "--host", default=None, help="HTTP bind address [env BROADCAST_HOST, 127.0.0.1]"
)
_port = click.option("--port", type=int, default=None, help="HTTP port [env BROADCAST_PORT, 8080]")


@main.command("check-config")
@_host
@_port
def check_config(host: str | None, port: int | None) -> None:
    """Validate the settings and print the configuration `serve` would run with."""
    settings = _settings(host, port)
    for line in describe(settings):
        click.echo(line)
    click.echo(f"# base URL (registry, relays): {settings.base_url}")
    registry = "Redis (BROADCAST_REDIS_URL)" if settings.redis_url else "this machine only"
    click.echo(f"# registry: {registry}; cluster mode: {settings.cluster_mode}")
    if settings.workers > 1:
        layout = Layout(settings)
        last = settings.workers - 1
        click.echo(
            f"# {settings.workers} workers: node ids {layout.node_id(0)}..{layout.node_id(last)}, "
            f"private HTTP ports {layout.private_port(0)}-{layout.private_port(last)}"
        )
    if settings.udp_port is not None:
        ports = f"{settings.udp_port}-{settings.udp_port + settings.workers - 1}"
        click.echo(f"# media: UDP port(s) {ports}, one socket per worker")
    else:
        click.echo("# media: one OS-chosen UDP port per connection (BROADCAST_UDP_PORT unset)")


@main.command()
@_host
@_port
def serve(host: str | None, port: int | None) -> None:
    """Run a node. Every setting also comes from BROADCAST_* environment variables."""
    settings = _settings(host, port)
    logs.configure(settings.log_level, settings.log_format, settings.node_id)
    if settings.workers > 1:
        try:
            status = run_workers(settings)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        raise SystemExit(status)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through broadcast.logs too
        access_log=False,
    )
    DrainingServer(config, app.state.drain).run()
