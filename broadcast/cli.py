"""The `broadcast` command."""

from __future__ import annotations

import logging

import click
import uvicorn
from pydantic import ValidationError

from broadcast import __version__
from broadcast.app import create_app
from broadcast.config import load_settings
from broadcast.drain import DrainingServer
from broadcast.workers import run_workers

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="broadcast")
def main() -> None:
    """WHIP/WHEP live broadcast server."""


@main.command()
@click.option("--host", default=None, help="HTTP bind address [env BROADCAST_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="HTTP port [env BROADCAST_PORT, 8080]")
def serve(host: str | None, port: int | None) -> None:
    """Run a node. Every setting also comes from BROADCAST_* environment variables."""
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        settings = load_settings(**overrides)
    except (ValidationError, ValueError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per relay request
    if settings.workers > 1:
        try:
            status = run_workers(settings)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        raise SystemExit(status)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False
    )
    DrainingServer(config, app.state.drain).run()
