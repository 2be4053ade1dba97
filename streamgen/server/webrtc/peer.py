"""Offer in, answer out: one aiortc peer connection per client, set up the same way everywhere.

``/offer`` (browser, sendrecv video), WHIP (OBS and other publishers,
receive-only for the server) and WHEP (viewers, send-only for the server)
differ only in the direction of the video transceiver and in which track the
server sends. Before the offer is applied, the server creates its
transceivers in the offer's order: the first video m-line gets the server's
codec preferences (so only the configured codecs can be negotiated), audio
and any further video m-lines are answered ``inactive`` (never decoded, so
nothing piles up unread).

aiortc gathers its ICE candidates inside ``setLocalDescription``, so the
answer carries them: clients that cannot trickle (OBS) connect with it as is.
Offers may come without candidates; the server learns the client's address
from its connectivity checks (peer-reflexive candidates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from ...errors import InputError

logger = logging.getLogger(__name__)

MAX_SDP_CHARS = 64 * 1024
VideoDirection = Literal["sendrecv", "recvonly", "sendonly"]


@dataclass(frozen=True)
class OfferShape:
    """The media sections of a client's offer, in order (``audio``, ``video``, ``application``)."""

    kinds: tuple[str, ...]
    video_codecs: tuple[str, ...] = ()  # codec names offered in the first video section, upper case

    @property
    def has_video(self) -> bool:
        return "video" in self.kinds

    def check_codecs(self, accepted: Sequence[str]) -> None:
        """Fail early (before any work) when the video section offers none of ``accepted``."""
        if self.has_video and not set(self.video_codecs) & {c.upper() for c in accepted}:
            offered = ", ".join(c for c in self.video_codecs if c not in ("RTX", "RED", "ULPFEC", "FLEXFEC-03")) or "none"
            raise InputError(f"the offer has no video codec in common with this server, which accepts {', '.join(accepted)} (offered: {offered})")


def parse_offer(text: object) -> OfferShape:
    """Check that ``text`` is a usable SDP offer; raise :class:`InputError` saying why not."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("the offer must be a non-empty SDP string")
    if len(text) > MAX_SDP_CHARS:
        raise InputError(f"the SDP offer is {len(text)} characters; the limit is {MAX_SDP_CHARS}")
    if not text.lstrip().startswith("v=0"):
        raise InputError("malformed SDP offer: it must start with 'v=0'")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as error:  # noqa: BLE001 - any parser failure means the client sent bad SDP
        detail = f": {error}" if str(error) else ""
        raise InputError(f"malformed SDP offer ({type(error).__name__}{detail})") from None
    kinds = tuple(media.kind for media in description.media)
    if not kinds:
        raise InputError("malformed SDP offer: it has no media sections")
    for media in description.media:
        if media.kind in ("audio", "video", "application") and (media.ice is None or not media.ice.usernameFragment or not media.ice.password):
            raise InputError("malformed SDP offer: a media section lacks ICE credentials (a=ice-ufrag / a=ice-pwd)")
        if media.kind in ("audio", "video", "application") and (media.dtls is None or not media.dtls.fingerprints):
            raise InputError("malformed SDP offer: a media section lacks a DTLS fingerprint (a=fingerprint)")
    _check_media_ids(description)
    video = next((m for m in description.media if m.kind == "video"), None)
    if video is not None and video.port == 0:
        raise InputError("the offer's video section is disabled (port 0 on its m= line); offer an active video section")
    codecs = tuple(dict.fromkeys(c.name.upper() for c in video.rtp.codecs)) if video is not None else ()
    return OfferShape(kinds, codecs)


def _check_media_ids(description: "aiortc_sdp.SessionDescription") -> None:
    """Media ids must be unique and a BUNDLE group may name only media of the offer, each once."""
    mids = [m.rtp.muxId for m in description.media if m.rtp.muxId]
    duplicates = sorted({mid for mid in mids if mids.count(mid) > 1})
    if duplicates:
        raise InputError(f"malformed SDP offer: media id(s) {', '.join(map(repr, duplicates))} appear in more than one section (a=mid)")
    for group in description.group:
        if group.semantic != "BUNDLE":
            continue
        items = list(group.items)
        repeated = sorted({i for i in items if items.count(i) > 1})
        unknown = sorted(set(items) - set(mids))
        if repeated:
            raise InputError(f"malformed SDP offer: the BUNDLE group names {', '.join(map(repr, repeated))} twice")
        if unknown:
            raise InputError(f"malformed SDP offer: the BUNDLE group names media id(s) {', '.join(map(repr, unknown))} that no section has")


def new_peer_connection(ice_servers: Sequence[Any]) -> RTCPeerConnection:
    """A peer connection with exactly the configured ICE servers (aiortc would add a public STUN server).

    ``ice_servers``: ``RTCIceServer`` entries (with TURN credentials:
    :meth:`~streamgen.server.webrtc.ice_servers.IcePolicy.aiortc_servers`) or plain STUN URLs.
    """
    servers = [server if isinstance(server, RTCIceServer) else RTCIceServer(server) for server in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def video_codec_preferences(codecs: Sequence[str]) -> list:
    """aiortc codec capabilities for ``codecs`` (e.g. ``("VP8", "H264")``) in that order, plus RTX."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for name in codecs for c in capabilities if c.mimeType.lower() == f"video/{name.lower()}"]
    return chosen + [c for c in capabilities if c.mimeType.lower() == "video/rtx"]


def add_transceivers(pc: RTCPeerConnection, shape: OfferShape, direction: VideoDirection, track: MediaStreamTrack | None, codecs: Sequence[str]) -> RTCRtpTransceiver:
    """Create the server's transceivers for ``shape`` before the offer is applied; returns the video one."""
    video: RTCRtpTransceiver | None = None
    for kind in shape.kinds:
        if kind == "video" and video is None:
            video = pc.addTransceiver(track if track is not None else "video", direction=direction)
            video.setCodecPreferences(video_codec_preferences(codecs))
        elif kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="inactive")
    if video is None:
        raise InputError("the offer has no video section")
    return video


async def answer_offer(pc: RTCPeerConnection, offer_sdp: str, codecs: Sequence[str]) -> str:
    """Apply the offer and return the answer SDP (with the server's candidates)."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except Exception as error:  # noqa: BLE001 - aiortc rejects bad or incompatible offers with assorted errors
        text = str(error)
        if "video description send parameters" in text:
            raise InputError(f"the offer has no video codec in common with this server, which accepts {', '.join(codecs)}") from None
        if "audio description send parameters" in text:
            raise InputError("the offer's audio section has no codec this server can negotiate (Opus, G.722, PCMU, PCMA)") from None
        raise InputError(f"the SDP offer cannot be used: {type(error).__name__}: {error}") from None
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    return pc.localDescription.sdp
