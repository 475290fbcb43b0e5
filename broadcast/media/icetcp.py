"""ICE over TCP on the media port, for viewers whose networks drop UDP (RFC 6544).

With BROADCAST_UDP_PORT set, the server also listens on TCP at the same port number and
offers a passive TCP host candidate beside each UDP one (lower priority, so UDP wins
wherever it works). A client behind a UDP-blocking firewall connects to it and speaks
ICE, DTLS and SRTP over that connection, each packet framed by a 2-byte length
(RFC 4571). The first frame must be a STUN Binding request whose USERNAME names a live
connection's ufrag and whose MESSAGE-INTEGRITY checks out with its password; the TCP
connection then becomes one more candidate (protocol) of that ICE connection, and aioice
does the rest: the check, the nomination, consent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aioice import stun
from aioice.candidate import Candidate, candidate_foundation
from aioice.ice import StunProtocol

if TYPE_CHECKING:
    from broadcast.media.udpmux import UdpMux

__all__ = ["IceTcpServer", "tcp_candidate"]

logger = logging.getLogger(__name__)

FIRST_FRAME_TIMEOUT = 10.0  # seconds a new TCP connection has to send its STUN check
TYPE_PREFERENCE = 90  # RFC 6544 §4.2: below UDP host candidates (126)


def tcp_candidate(host: str, port: int, component: int) -> Candidate:
    """A passive TCP host candidate (RFC 6544 §4.5)."""
    priority = (1 << 24) * TYPE_PREFERENCE + (1 << 8) * 65535 + (256 - component)
    return Candidate(
        foundation=candidate_foundation("host", "tcp", host),
        component=component,
        transport="tcp",
        priority=priority,
        host=host,
        port=port,
        type="host",
        tcptype="passive",
    )


class _Framing:
    """A TCP stream as a StunProtocol's transport: `sendto` writes one RFC 4571 frame."""

    def __init__(self, writer: asyncio.StreamWriter, protocol: StunProtocol) -> None:
        self._writer = writer
        self._protocol = protocol

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if len(data) <= 0xFFFF and not self._writer.is_closing():
            self._writer.write(len(data).to_bytes(2, "big") + data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        self._writer.close()
        self._protocol.connection_lost(None)


class IceTcpServer:
    def __init__(self, mux: UdpMux) -> None:
        self.mux = mux
        self.server: asyncio.Server | None = None
        self.clients = 0  # TCP connections carrying an ICE connection now
        self.refused = 0  # TCP connections closed before they named a live connection

    async def open(self) -> None:
        try:
            self.server = await asyncio.start_server(self._serve, self.mux.bind, self.mux.port)
        except OSError as exc:  # a fallback: UDP media goes on without it
            logger.warning("no ICE-TCP: TCP port %d: %s", self.mux.port, exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = (str(peer[0]), int(peer[1]))
        protocol: StunProtocol | None = None
        try:
            first = await asyncio.wait_for(_frame(reader), FIRST_FRAME_TIMEOUT)
            protocol = self._adopt(first, addr, writer)
            if protocol is None:
                self.refused += 1
                return
            self.clients += 1
            protocol.datagram_received(first, addr)
            while True:
                protocol.datagram_received(await _frame(reader), addr)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if protocol is not None:
                self.clients -= 1
                protocol.connection_lost(None)
                with contextlib.suppress(ValueError):
                    protocol.receiver._protocols.remove(protocol)
            writer.close()

    def _adopt(
        self, frame: bytes, addr: tuple[str, int], writer: asyncio.StreamWriter
    ) -> StunProtocol | None:
        """The ICE connection this TCP connection's first check is for, as a new
        candidate (protocol) of it; None if it names none or does not authenticate."""
        try:
            message = stun.parse_message(frame)
        except ValueError:
            return None
        username = message.attributes.get("USERNAME")
        if message.message_class != stun.Class.REQUEST or not isinstance(username, str):
            return None
        connection = self.mux.connection_of(username.partition(":")[0])
        if connection is None:
            return None
        if not message.check_message_integrity(connection.local_password.encode()):
            return None
        local = self.mux.tcp_candidate_of(connection)
        if local is None:
            return None
        protocol = StunProtocol(connection)
        protocol.connection_made(_Framing(writer, protocol))  # type: ignore[arg-type]
        protocol.local_candidate = local
        connection._protocols.append(protocol)
        return protocol


async def _frame(reader: asyncio.StreamReader) -> bytes:
    """One RFC 4571 frame: a 16-bit length, then that many bytes."""
    header = await reader.readexactly(2)
    return await reader.readexactly(int.from_bytes(header, "big"))
