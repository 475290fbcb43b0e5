"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) endpoints and session resources.

HTTP mapping only: the offer is checked by broadcast.protocol.offer, sessions live in
broadcast.media.hub. The two protocols share every rule except the direction of media
and who may call them, so one class serves both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiortc.sdp import candidate_from_sdp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import Receive, Scope, Send

from broadcast.config import Settings
from broadcast.errors import (
    BadRequest,
    BroadcastError,
    MalformedSdpFrag,
    MethodNotAllowed,
    PreconditionFailed,
    UnprocessableContent,
)
from broadcast.http.auth import Authenticator
from broadcast.http.common import (
    bearer_is,
    cors_headers,
    if_match_allows,
    is_preflight,
    problem_response,
    read_text_body,
    require_media_type,
    stream_name,
)
from broadcast.media import aiortc_glue as glue
from broadcast.media.hub import Hub
from broadcast.media.relay import HOPS_HEADER, MAX_RELAYED_LAYERS
from broadcast.media.session import Session
from broadcast.protocol.links import ice_server_links
from broadcast.protocol.offer import inspect_offer
from broadcast.protocol.sdpfrag import SdpFrag, parse_sdpfrag
from broadcast.protocol.simulcast import RID

__all__ = ["Endpoints"]

logger = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
ENDPOINT_METHODS = "OPTIONS, POST, GET, HEAD"
SESSION_METHODS = "OPTIONS, PATCH, DELETE, GET, HEAD"
# aioice resolves mDNS (.local) candidates; bound how long a PATCH may wait for that.
CANDIDATE_TIMEOUT = 2.0


def layer_query(request: Request) -> str | None:
    """The optional `?layer=<rid>` of a WHEP POST: the simulcast layer to receive."""
    layer = request.query_params.get("layer")
    if layer is not None and not RID.fullmatch(layer):
        raise BadRequest("layer must be a simulcast rid: 1-255 letters, digits, '-' or '_'")
    return layer


class _Resource:
    """One WHIP/WHEP URL as an ASGI app, so Starlette routes every method to it.

    Adds CORS headers to every answer and maps our errors to problem documents; the
    handler's own 405 then names exactly the methods this URL allows.
    """

    def __init__(
        self,
        handler: Callable[[Request], Awaitable[Response]],
        settings: Settings,
        methods: str,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.methods = methods
        self.app = request_response(self.respond)

    async def respond(self, request: Request) -> Response:
        cors = cors_headers(request, self.settings, methods=self.methods)
        try:
            response = await self.handler(request)
        except BroadcastError as error:
            response = problem_response(error, request.url.path)
        response.headers.update(cors)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class Endpoints:
    def __init__(
        self,
        role: Literal["whip", "whep"],
        settings: Settings,
        hub: Hub,
        extension_links: Callable[[Session], list[str]] | None = None,
    ) -> None:
        self.role = role
        self.settings = settings
        self.hub = hub
        # RFC 9725 §4.9: protocol extensions are advertised with Link headers in the 201.
        self.extension_links = extension_links
        self.auth = Authenticator(settings)

    def routes(self) -> list[Route]:
        return [
            Route(
                f"/{self.role}/{{stream}}",
                _Resource(self._endpoint, self.settings, ENDPOINT_METHODS),
            ),
            Route(
                f"/{self.role}/{{stream}}/{{session}}",
                _Resource(self._session, self.settings, SESSION_METHODS),
            ),
        ]

    async def _endpoint(self, request: Request) -> Response:
        method = request.method
        if method == "OPTIONS":
            return self._options(request)
        if method not in ("POST", "GET", "HEAD"):
            raise MethodNotAllowed(
                f"{method} is not used on a {self.role.upper()} endpoint", allow=ENDPOINT_METHODS
            )
        name = stream_name(request.path_params["stream"])
        if method in ("GET", "HEAD"):
            # draft-ietf-wish-whep §4.1: HEAD (and GET) answer 200 with the media type
            # of the POST body, no content; RFC 9725 asks the same 2xx of GET.
            return Response(b"", status_code=200, headers={"Accept-Post": SDP, "Content-Type": SDP})
        try:
            return await self._post(request, name)
        except BroadcastError as error:
            self.hub.ledger.refused(self.role, error)
            raise

    async def _post(self, request: Request, name: str) -> Response:
        hops = self._authorize(request, name)
        require_media_type(request, SDP, header="Accept-Post")
        offer = await read_text_body(request, self.settings.max_body_bytes)
        # Another node's upstream (hops > 0) takes one video section per simulcast layer.
        summary = inspect_offer(
            offer, role=self.role, video_sections=MAX_RELAYED_LAYERS if hops else 1
        )
        if self.role == "whip":
            session: Session = await self.hub.publish(name, offer, summary.simulcast())
        else:
            session = await self.hub.play(name, offer, layer_query(request), hops)
        headers = {
            "Location": session.path,
            "ETag": session.etag,
            "Accept-Patch": SDPFRAG,
        }
        links = self._ice_links()
        if self.extension_links is not None:
            links += self.extension_links(session)
        if links:
            headers["Link"] = ", ".join(links)
        return Response(session.answer, status_code=201, media_type=SDP, headers=headers)

    def _authorize(self, request: Request, name: str) -> int:
        """Check the Bearer token; answer the relay hops the request comes from.

        Another node of the cluster may also use the cluster secret for WHEP (an edge's
        upstream session), and only it may say how many relay hops it is from the origin.
        """
        secret = self.settings.cluster_secret
        if self.role == "whep" and secret is not None and bearer_is(request, secret):
            value = request.headers.get(HOPS_HEADER, "0")
            if not (value.isascii() and value.isdigit()) or int(value) > 64:
                raise BadRequest(f"{HOPS_HEADER} must be a small non-negative integer")
            return int(value)
        self.auth.check(request, "publish" if self.role == "whip" else "view", name)
        return 0

    def _options(self, request: Request) -> Response:
        headers = {"Accept-Post": SDP, "Allow": ENDPOINT_METHODS}
        # RFC 9725 §4.6: ICE servers MAY be sent on OPTIONS, SHOULD NOT on a CORS preflight
        # (its response cannot carry credentials a page can read).
        if not is_preflight(request):
            links = self._ice_links()
            if links:
                headers["Link"] = ", ".join(links)
        return Response(b"", status_code=200, headers=headers)

    def _ice_links(self) -> list[str]:
        return ice_server_links(
            self.settings.ice_servers,
            turn_secret=self.settings.turn_secret,
            turn_ttl=self.settings.turn_ttl,
            now=time.time(),
            user=self.role,
        )

    async def _session(self, request: Request) -> Response:
        method = request.method
        if method == "OPTIONS":
            return Response(
                b"", status_code=200, headers={"Accept-Patch": SDPFRAG, "Allow": SESSION_METHODS}
            )
        if method not in ("PATCH", "DELETE", "GET", "HEAD"):
            raise MethodNotAllowed(
                f"{method} is not used on a {self.role.upper()} session", allow=SESSION_METHODS
            )
        name = stream_name(request.path_params["stream"])
        session = self.hub.get(self.role, name, request.path_params["session"])
        if method in ("GET", "HEAD"):
            return Response(b"", status_code=200)
        self._authorize(request, name)
        if method == "DELETE":
            # RFC 9725 §4.4: ETags are ignored on DELETE. Closing the peer connection
            # sends RTCP BYE and a DTLS close_notify, and stops answering consent checks
            # (RFC 7675 §5.2).
            await self.hub.delete(session)
            return Response(b"", status_code=200)
        return await self._patch(request, session)

    async def _patch(self, request: Request, session: Session) -> Response:
        require_media_type(request, SDPFRAG, header="Accept-Patch")
        body = await read_text_body(request, self.settings.max_body_bytes)
        frag = parse_sdpfrag(body)
        if_match = request.headers.get("if-match")
        if frag.ice_ufrag is not None and frag.ice_ufrag != session.remote_ufrag:
            # aiortc/aioice cannot restart ICE on a live connection (aiortc #211), so this
            # server does trickle only and must answer a restart with 422 (RFC 9725 §4.3.1);
            # the session and its ICE state stay as they are.
            raise UnprocessableContent(
                "ICE restart is not supported by this server; DELETE the session and POST a "
                "new offer instead"
            )
        if if_match is not None and not if_match_allows(if_match, session.etag):
            raise PreconditionFailed(
                "If-Match does not name the current ICE session; its ETag is in the 201"
            )
        await self._add_candidates(session, frag)
        return Response(b"", status_code=204)

    async def _add_candidates(self, session: Session, frag: SdpFrag) -> None:
        parsed = []
        for media in frag.media:
            for value in media.candidates:
                try:
                    candidate = candidate_from_sdp(value)
                except (AssertionError, ValueError, IndexError) as exc:
                    raise MalformedSdpFrag(f"candidate {value!r} cannot be parsed") from exc
                candidate.sdpMid = media.mid
                candidate.sdpMLineIndex = media.mline_index
                parsed.append((value, candidate))
        # Concurrently: each mDNS (.local) name may take a resolver timeout of its own.
        await asyncio.gather(*(self._add_candidate(session, v, c) for v, c in parsed))
        if frag.end_of_candidates or any(m.end_of_candidates for m in frag.media):
            # RFC 8840 §4.4: end-of-candidates; with BUNDLE one transport covers all m-lines.
            await glue.add_remote_candidate(session.pc, None)

    async def _add_candidate(self, session: Session, value: str, candidate: object) -> None:
        try:
            await asyncio.wait_for(
                glue.add_remote_candidate(session.pc, candidate), CANDIDATE_TIMEOUT
            )
        except Exception as exc:
            # RFC 9725 §4.3.1: unusable candidates are silently discarded.
            session.log.debug("candidate %r discarded: %r", value, exc)
