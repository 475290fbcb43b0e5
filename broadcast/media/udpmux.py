"""Where server ICE connections gather: one UDP port for the media of every peer connection
of this process (BROADCAST_UDP_PORT), and NAT 1:1 addresses (BROADCAST_PUBLIC_IPS).

aioice binds an OS-chosen port per connection, which no firewall rule or Kubernetes
Service can expose. Here every server-side ICE connection shares one socket:

- its host candidates all carry that port, on each address we advertise
  (BROADCAST_PUBLIC_IPS for NAT 1:1, else the local addresses aioice gathers on);
- an incoming datagram from a remote address we know goes straight to its connection;
  non-STUN datagrams (DTLS, SRTP: RFC 7983 §7, first byte above 3) take that path
  without the STUN parse aioice tries on every packet;
- a STUN Binding request from an unknown address is routed by the local part of its
  USERNAME (RFC 8445 §7.2.2: "<our ufrag>:<their ufrag>"), after its MESSAGE-INTEGRITY
  checks out with that connection's password, and the address is learned;
- STUN responses go to the candidate (protocol) whose transaction they answer.

Every connection gets a ufrag no other live connection has (aiortc shares one ufrag
between the transports of an unbundled peer connection, and aioice's 4-character ufrags
collide in a large audience): the SDP carries it, since aiortc writes the ICE parameters
after gathering.

Without the mux, BROADCAST_PUBLIC_IPS still applies: `PublicAddresses` lets aioice bind its
ports and advertises each IPv4 host candidate's port on the public address instead (a 1:1
NAT maps every port).

Only server connections are affected: `gathering_on(plan)` sets the plan for the current
task, around setLocalDescription; any other peer connection in the process (a test's
client) gathers as aioice always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Iterator
from typing import Any, Protocol

from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol
from aioice.utils import random_string

from broadcast.media.icetcp import IceTcpServer, tcp_candidate

__all__ = ["Gathering", "PublicAddresses", "UdpMux", "gathering_on", "install", "plan"]

logger = logging.getLogger(__name__)

SOCKET_BUFFER = 8 << 20  # bytes; one socket carries every viewer's media now
UFRAG_LENGTH = 8  # RFC 8445 §5.3: at least 4 characters; 8 keeps a big audience unique

Address = tuple[str, int]


class Gathering(Protocol):
    async def gather(
        self, connection: Connection, component: int, addresses: list[str], timeout: int
    ) -> list[Candidate]:
        """The connection's candidates for `component` (aioice's get_component_candidates)."""


_current: contextvars.ContextVar[Gathering | None] = contextvars.ContextVar(
    "broadcast_gathering", default=None
)


@contextlib.contextmanager
def gathering_on(plan: Gathering | None) -> Iterator[None]:
    """ICE connections that gather inside this block follow `plan` (None: aioice's way)."""
    token = _current.set(plan)
    try:
        yield
    finally:
        _current.reset(token)


class _Transport:
    """What a muxed StunProtocol sees as its transport: the shared socket's `sendto`
    (bound as is, so the media path pays no extra call), its own advertised address."""

    def __init__(self, mux: UdpMux, protocol: _MuxedProtocol) -> None:
        self.sendto = mux.sendto
        self._mux = mux
        self._protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            candidate = self._protocol.local_candidate
            return (candidate.host, candidate.port)
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self._mux.forget(self._protocol)
        self._protocol.connection_lost(None)


class _MuxedProtocol(StunProtocol):
    def __init__(self, receiver: Connection, mux: UdpMux) -> None:
        super().__init__(receiver)
        self.mux = mux
        self.addresses: set[Address] = set()

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        # The remote answers our checks from this address: route it here.
        self.mux.learn(addr, self)
        super().send_stun(message, addr)


class UdpMux(asyncio.DatagramProtocol):
    def __init__(self, port: int, advertised: list[str], bind: str = "0.0.0.0") -> None:
        self.port = port
        self.bind = bind
        self.advertised = advertised  # empty: the addresses aioice gathers on
        self.transport: asyncio.DatagramTransport | None = None
        self.sendto: Any = None
        self._by_ufrag: dict[str, list[_MuxedProtocol]] = {}
        self._by_addr: dict[Address, _MuxedProtocol] = {}
        self._tcp: dict[str, Candidate] = {}  # ufrag -> its passive ICE-TCP candidate
        self.tcp = IceTcpServer(self)  # RFC 6544 on the same port number, for UDP-less viewers
        self.unrouted = 0  # datagrams nobody could be found for

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((self.bind, self.port))
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self.transport = transport
        self.sendto = transport.sendto
        await self.tcp.open()
        logger.info("media on one port: %s:%d UDP, and TCP for ICE-TCP", self.bind, self.port)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.tcp.close()

    @property
    def connections(self) -> int:
        return len(self._by_ufrag)

    # --- registration ------------------------------------------------------------------

    async def gather(
        self, connection: Connection, component: int, addresses: list[str], timeout: int
    ) -> list[Candidate]:
        return self.candidates(connection, component, addresses)

    def candidates(
        self, connection: Connection, component: int, addresses: list[str]
    ) -> list[Candidate]:
        """Host candidates on the shared port for `connection`, one protocol each."""
        ufrag = connection.local_username
        if ufrag in self._by_ufrag or len(ufrag) < UFRAG_LENGTH:
            while ufrag in self._by_ufrag or len(ufrag) < UFRAG_LENGTH:
                ufrag = random_string(UFRAG_LENGTH)
            connection._local_username = ufrag
        hosts = self.advertised or [a for a in addresses if ":" not in a]
        protocols = []
        for host in hosts:
            protocol = _MuxedProtocol(connection, self)
            protocol.connection_made(_Transport(self, protocol))  # type: ignore[arg-type]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=self.port,
                type="host",
            )
            protocols.append(protocol)
        self._by_ufrag[ufrag] = protocols
        connection._protocols += protocols
        tcp = [tcp_candidate(host, self.port, component) for host in hosts[:1]]
        if tcp:
            self._tcp[ufrag] = tcp[0]
        return [p.local_candidate for p in protocols] + tcp

    def connection_of(self, ufrag: str) -> Connection | None:
        protocols = self._by_ufrag.get(ufrag)
        return protocols[0].receiver if protocols else None

    def tcp_candidate_of(self, connection: Connection) -> Candidate | None:
        return self._tcp.get(connection.local_username)

    def learn(self, addr: Address, protocol: _MuxedProtocol) -> None:
        current = self._by_addr.get(addr)
        if current is not protocol:
            if current is not None:
                current.addresses.discard(addr)
            self._by_addr[addr] = protocol
            protocol.addresses.add(addr)

    def forget(self, protocol: _MuxedProtocol) -> None:
        for addr in protocol.addresses:
            if self._by_addr.get(addr) is protocol:
                del self._by_addr[addr]
        protocol.addresses.clear()
        ufrag = protocol.receiver.local_username
        siblings = self._by_ufrag.get(ufrag)
        if siblings is not None and protocol in siblings:
            siblings.remove(protocol)
            if not siblings:
                del self._by_ufrag[ufrag]
                self._tcp.pop(ufrag, None)

    # --- receiving ---------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        protocol = self._by_addr.get(addr)
        if data and data[0] > 3:  # RFC 7983 §7: DTLS 20-63, RTP/RTCP 128-191
            if protocol is not None:
                protocol.receiver.data_received(data, protocol.local_candidate.component)
            else:
                self.unrouted += 1
            return
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.unrouted += 1
            return
        if message.message_class == stun.Class.REQUEST:
            protocol = self._requested(message, addr, protocol)
        elif protocol is not None:  # a response: to the candidate that asked
            for sibling in self._by_ufrag.get(protocol.receiver.local_username, ()):
                if message.transaction_id in sibling.transactions:
                    protocol = sibling
                    break
        if protocol is None:
            self.unrouted += 1
            return
        protocol.datagram_received(data, addr)

    def _requested(
        self,
        message: stun.Message,
        addr: Address,
        known: _MuxedProtocol | None,
    ) -> _MuxedProtocol | None:
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str):
            return known
        protocols = self._by_ufrag.get(username.partition(":")[0])
        if not protocols:
            return known
        if known is not None and known in protocols:
            return known
        password = protocols[0].receiver.local_password.encode()
        # RFC 8445 §7.3: only a request that authenticates moves an address.
        if not message.check_message_integrity(password):
            return None
        self.learn(addr, protocols[0])
        return protocols[0]

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP mux socket error: %s", exc)


_ORIGINAL = Connection.get_component_candidates


class PublicAddresses:
    """aioice's own ports, advertised on the NAT 1:1 public addresses."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def gather(
        self, connection: Connection, component: int, addresses: list[str], timeout: int
    ) -> list[Candidate]:
        out = []
        for candidate in await _ORIGINAL(connection, component, addresses, timeout):
            if candidate.type != "host" or ":" in candidate.host:
                out.append(candidate)
                continue
            for public in self.addresses:
                moved = Candidate(
                    foundation=candidate_foundation("host", "udp", public),
                    component=candidate.component,
                    transport=candidate.transport,
                    priority=candidate.priority,
                    host=public,
                    port=candidate.port,
                    type="host",
                )
                for protocol in connection._protocols:
                    if protocol.local_candidate is candidate:
                        protocol.local_candidate = moved
                out.append(moved)
                break  # one public address per local port
        return out


def plan(udp_port: int | None, public_ips: list[str], ice_addresses: list[str]) -> Gathering | None:
    """How this process's server connections gather, from the settings (None: as aioice
    does). The mux binds the one ICE address if exactly one is set, else every interface."""
    if udp_port is not None:
        bind = ice_addresses[0] if len(ice_addresses) == 1 else "0.0.0.0"
        public = [ip for ip in public_ips if ":" not in ip]  # the mux socket is IPv4
        advertised = public or ([bind] if bind != "0.0.0.0" else [])
        return UdpMux(udp_port, advertised, bind)
    if public_ips:
        return PublicAddresses(public_ips)
    return None


async def _get_component_candidates(
    self: Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[Candidate]:
    gathering = _current.get()
    if gathering is None:
        return await _ORIGINAL(self, component, addresses, timeout)
    return await gathering.gather(self, component, addresses, timeout)


def install() -> None:
    """Route gathering through `gathering_on` (idempotent; inert outside that block)."""
    Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]
