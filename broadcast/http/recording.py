"""The recording API: start and stop a stream's recording, list and fetch its files.

    GET    /api/streams/{stream}/recording           -> 200 state
    POST   /api/streams/{stream}/recording           -> 200 state (recording the live stream)
    DELETE /api/streams/{stream}/recording           -> 200 state (stopped, and not restarted)
    GET    /api/streams/{stream}/recordings          -> 200 [{name, bytes, in_progress, url}]
    GET    /api/streams/{stream}/recordings/{file}   -> 200 the file (Range requests honoured)
    DELETE /api/streams/{stream}/recordings/{file}   -> 204

Starting, stopping and deleting need the stream's publish credentials; listing and
downloading need the viewer's (broadcast.http.auth). A stream published on another node is
answered with a 307 to the same path there (RFC 9110 §15.4.8).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from broadcast.config import Settings
from broadcast.errors import BroadcastError, Conflict, ServiceUnavailable, TemporaryRedirect
from broadcast.http.auth import Authenticator, Role
from broadcast.http.common import cors_headers, problem_response, stream_name
from broadcast.media.hub import Hub
from broadcast.registry.base import RegistryUnavailable

__all__ = ["RecordingApi"]

_MEDIA_TYPES = {"webm": "video/webm", "mkv": "video/x-matroska", "mp4": "video/mp4"}


class RecordingApi:
    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self.recordings = hub.recordings
        self.settings = settings
        self.auth = Authenticator(settings)

    def routes(self) -> list[Route]:
        base = "/api/streams/{stream}"
        return [
            Route(f"{base}/recording", self.control, methods=["GET", "HEAD", "POST", "DELETE"]),
            Route(f"{base}/recordings", self.listing, methods=["GET", "HEAD"]),
            Route(f"{base}/recordings/{{file}}", self.file, methods=["GET", "HEAD", "DELETE"]),
        ]

    def _cors(self, request: Request, methods: str) -> dict[str, str]:
        return cors_headers(request, self.settings, methods=methods)

    async def _admit(self, request: Request, role: Role) -> str:
        name = stream_name(request.path_params["stream"])
        self.auth.check(request, role, name)
        return name

    async def _elsewhere(self, request: Request, name: str) -> None:
        """307 to the node the stream is published on, when that is another node."""
        if name in self.hub.streams and self.hub.streams[name].live:
            return
        try:
            origin = await self.hub.cluster.origin_of(name)
        except RegistryUnavailable as exc:
            raise ServiceUnavailable(
                f"the stream registry is unreachable: {exc.detail}", retry_after=5
            ) from exc
        if origin is not None:
            raise TemporaryRedirect(
                f"{name!r} is published on {origin.node_id}",
                location=origin.url.rstrip("/") + request.url.path,
            )

    async def control(self, request: Request) -> Response:
        methods = "GET, HEAD, POST, DELETE"
        try:
            read = request.method in ("GET", "HEAD")
            name = await self._admit(request, "view" if read else "publish")
            await self._elsewhere(request, name)
            stream = self.hub.streams.get(name)
            if read:
                body = self.recordings.state(name)
            elif request.method == "POST":
                if not self.recordings.enabled:
                    raise Conflict("recording is off on this node: set BROADCAST_RECORD_DIR")
                if stream is None or not stream.live:
                    raise Conflict(f"stream {name!r} is not live on this node", retry_after=5)
                body = self.recordings.request(name, stream)
            else:
                body = self.recordings.decline(name)
        except BroadcastError as error:
            return self._problem(request, error, methods)
        return JSONResponse(body, headers=self._cors(request, methods))

    async def listing(self, request: Request) -> Response:
        try:
            name = await self._admit(request, "view")
        except BroadcastError as error:
            return self._problem(request, error, "GET, HEAD")
        body = self.recordings.files(name)
        return JSONResponse(body, headers=self._cors(request, "GET, HEAD"))

    async def file(self, request: Request) -> Response:
        methods = "GET, HEAD, DELETE"
        try:
            name = await self._admit(request, "publish" if request.method == "DELETE" else "view")
            file = request.path_params["file"]
            if request.method == "DELETE":
                self.recordings.delete(name, file)
                return Response(status_code=204, headers=self._cors(request, methods))
            path = self.recordings.path(name, file)
        except BroadcastError as error:
            return self._problem(request, error, methods)
        media_type = _MEDIA_TYPES[path.suffix[1:]]
        return FileResponse(
            path, media_type=media_type, filename=path.name, headers=self._cors(request, methods)
        )

    def _problem(self, request: Request, error: BroadcastError, methods: str) -> Response:
        response = problem_response(error, request.url.path)
        response.headers.update(self._cors(request, methods))
        return response
