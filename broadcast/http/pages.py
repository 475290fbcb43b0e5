"""The browser pages: stream list, WHEP player, WHIP publisher, and their static files.

The pages are plain files under `player/` (no build step): `GET /` is `index.html`,
`GET /watch/{stream}` is `watch.html`, `GET /publish/{stream}` is `publish.html`; each reads
the stream name from its own URL. Everything in `player/` is also served at `/player/`,
so `<script type="module" src="https://host/player/whep-player.js">` embeds the player.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from broadcast.errors import BroadcastError, NotFound
from broadcast.http.common import problem_response, stream_name

__all__ = ["Pages", "player_directory"]

_PACKAGE = Path(__file__).resolve().parent.parent


def player_directory() -> Path:
    """`broadcast/player` in an installed wheel, else the checkout's `player/`."""
    installed = _PACKAGE / "player"
    return installed if installed.is_dir() else _PACKAGE.parent / "player"


class _EmbeddableFiles(StaticFiles):
    """Static files any origin may load: a module script from another origin needs CORS."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response


class Pages:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or player_directory()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.index, methods=["GET", "HEAD"]),
            Route("/watch/{stream}", self.watch, methods=["GET", "HEAD"]),
            Route("/publish/{stream}", self.publish, methods=["GET", "HEAD"]),
            Mount(
                "/player",
                app=_EmbeddableFiles(directory=self.directory, check_dir=False),
                name="player",
            ),
        ]

    async def index(self, request: Request) -> Response:
        return self._page("index.html")

    async def watch(self, request: Request) -> Response:
        return self._stream_page(request, "watch.html")

    async def publish(self, request: Request) -> Response:
        return self._stream_page(request, "publish.html")

    def _stream_page(self, request: Request, name: str) -> Response:
        try:
            stream_name(request.path_params["stream"])
        except BroadcastError as error:
            return problem_response(error, request.url.path)
        return self._page(name)

    def _page(self, name: str) -> Response:
        path = self.directory / name
        if not path.is_file():
            return problem_response(NotFound(f"page {name} is not installed"), f"/{name}")
        # Pages change with the server; revalidate instead of caching stale copies.
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})
