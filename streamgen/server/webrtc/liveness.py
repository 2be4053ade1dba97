"""How long a peer connection has received nothing: a vanished peer is noticed in seconds, not at ICE's ~30.

A client killed with ``kill -9`` (or whose network went away) says no
goodbye. aiortc notices only through ICE consent freshness (RFC 7675,
aioice): a consent check every ~5 s, the connection ``failed`` after 6 in a
row went unanswered, ~30 s or more. A live peer, though, is never silent
for long: a publisher sends media and RTCP sender reports, anything that
receives video sends RTCP receiver reports about every second, and a client
with the ``control`` channel acknowledges the stats the server pushes every
second. So a connected peer whose DTLS transport has received no packet at
all for ``peer_timeout`` seconds has gone, and its session (or WHEP viewer)
is closed by the sweeper of :mod:`streamgen.server.sessions.manager`.

:class:`PacketWatch` reads the transport's ``packetsReceived`` counter (the
``transport`` entry of aiortc's public ``getStats``: every RTP, RTCP,
DTLS/SCTP datagram; ICE's own STUN checks are not in it) and remembers
when it last moved.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)


async def packets_received(pc: RTCPeerConnection) -> int | None:
    """Datagrams the peer connection's DTLS transports have received so far (None: no transport yet)."""
    total, seen = 0, set()
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        transport = getattr(receiver, "transport", None)
        if transport is None or id(transport) in seen:
            continue
        seen.add(id(transport))
        report = await receiver.getStats()
        total += sum(int(getattr(s, "packetsReceived", 0) or 0) for s in report.values() if getattr(s, "type", None) == "transport")
    return total if seen else None


class PacketWatch:
    """When a peer connection last received anything (see module docstring)."""

    def __init__(self, pc: Any) -> None:
        self.pc = pc
        self._count: int | None = None
        self._moved_at: float | None = None

    async def silent_for(self, now: float) -> float:
        """Seconds since the received-packet count last changed (0 at the first look: the clock starts then).

        Never raises: a peer connection closing under it just reads as "no news" (the sweeper must keep running).
        """
        try:
            count = await packets_received(self.pc)
        except Exception:  # noqa: BLE001 - aiortc objects torn down mid-read; the next sweep looks again
            logger.debug("could not read a peer connection's packet count", exc_info=True)
            return 0.0
        if count is None:
            return 0.0
        if count != self._count or self._moved_at is None:
            self._count, self._moved_at = count, now
        return now - self._moved_at
