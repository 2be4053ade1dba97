"""Bad input never hurts anyone else: each case is a 4xx JSON error or an error ack, another
session keeps streaming throughout, and no traceback is logged."""

from __future__ import annotations

import json
import logging

from aiortc import RTCConfiguration, RTCPeerConnection

from streamgen.client.webrtc import connect_offer
from streamgen.server.webrtc.peer import video_codec_preferences
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import ADMIN_TOKEN, bearer, running_server, tracebacks

MAX_BODY = 32 * 1024


async def make_offer(kind: str = "video", codecs: list[str] | None = None) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(kind, direction="sendrecv")
    if codecs:
        transceiver.setCodecPreferences(video_codec_preferences(codecs))
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def http_cases(offer: str, audio_offer: str, h264_offer: str, session_id: str) -> list[tuple[str, str, str, dict, int, str]]:
    """(name, method, path, request kwargs, expected status, a word the error must contain)."""
    json_headers = {"Content-Type": "application/json"}
    sdp_headers = {"Content-Type": "application/sdp"}

    def offer_body(**extra):
        return {"json": {"sdp": offer, "type": "offer", **extra}}

    def chunks():
        async def gen():
            for _ in range(MAX_BODY // 1024 + 8):
                yield b"x" * 1024

        return gen()

    return [
        ("malformed SDP", "POST", "/offer", {"json": {"sdp": "hello", "type": "offer"}}, 400, "SDP"),
        ("SDP that parses badly", "POST", "/offer", {"json": {"sdp": "v=0\r\nm=video x y\r\n", "type": "offer"}}, 400, "SDP"),
        ("SDP is not a string", "POST", "/offer", {"json": {"sdp": 12, "type": "offer"}}, 400, "SDP"),
        ("malformed SDP over WHIP", "POST", "/whip", {"data": b"v=0\r\nnonsense", "headers": sdp_headers}, 400, "SDP"),
        ("offer without video", "POST", "/offer", {"json": {"sdp": audio_offer, "type": "offer"}}, 400, "video"),
        ("no common codec", "POST", "/whip", {"data": h264_offer.encode(), "headers": sdp_headers}, 400, "codec"),
        ("answer instead of offer", "POST", "/offer", offer_body(type="answer"), 400, "offer"),
        ("wrong content type for /offer", "POST", "/offer", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
        ("wrong content type for WHIP", "POST", "/whip", {"json": {"sdp": offer}}, 415, "application/sdp"),
        ("wrong content type for WHEP", "POST", f"/whep/{session_id}", {"json": {}}, 415, "application/sdp"),
        ("wrong content type for PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"data": b"prompt=x"}, 415, "application/json"),
        ("oversized body", "POST", "/offer", {"data": b"{" + b" " * (MAX_BODY + 10) + b"}", "headers": json_headers}, 413, "limit"),
        ("oversized chunked body", "POST", "/whip", {"data": chunks(), "headers": sdp_headers}, 413, "large"),
        ("invalid JSON", "POST", "/offer", {"data": b'{"sdp": ', "headers": json_headers}, 400, "JSON"),
        ("invalid JSON in PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"data": b"{prompt: 1}", "headers": json_headers}, 400, "JSON"),
        ("JSON that is not an object", "PATCH", f"/api/sessions/{session_id}/params", {"json": [1, 2]}, 400, "object"),
        ("non-UTF-8 body", "POST", "/whip", {"data": b"v=0\xff\xfe", "headers": sdp_headers}, 400, "UTF-8"),
        ("unknown offer field", "POST", "/offer", offer_body(colour="red"), 400, "colour"),
        ("unknown parameter at creation", "POST", "/offer", offer_body(params={"colour": "red"}), 400, "colour"),
        ("params not an object", "POST", "/offer", offer_body(params=[1]), 400, "params"),
        ("unknown parameter in PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"json": {"colour": "red"}}, 400, "colour"),
        ("fixed setting in PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"json": {"width": 512}}, 400, "cannot be changed"),
        ("out of range at creation", "POST", "/offer", offer_body(params={"guidance_scale": -1}), 400, "guidance_scale"),
        ("bad size at creation", "POST", "/offer", offer_body(params={"width": 100}), 400, "multiple of 8"),
        ("out of range in PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"json": {"strength": 2}}, 400, "strength"),
        ("wrong type in PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"json": {"seed": "seven"}}, 400, "seed"),
        ("NaN in PATCH", "PATCH", f"/api/sessions/{session_id}/params", {"data": b'{"strength": NaN}', "headers": json_headers}, 400, "NaN"),
        ("Infinity at creation", "POST", "/offer", {"data": json.dumps({"sdp": offer, "type": "offer", "params": {"delta": float("inf")}}).encode(), "headers": json_headers}, 400, "Infinity"),
        ("unknown session GET", "GET", "/api/sessions/does-not-exist", {}, 404, "no session"),
        ("unknown session PATCH", "PATCH", "/api/sessions/does-not-exist/params", {"json": {"prompt": "x"}}, 404, "no session"),
        ("unknown session DELETE", "DELETE", "/api/sessions/does-not-exist", {}, 404, "no session"),
        ("unknown WHIP resource", "DELETE", "/whip/does-not-exist", {}, 404, "no session"),
        ("WHEP of an unknown session", "POST", "/whep/does-not-exist", {"data": offer.encode(), "headers": sdp_headers}, 404, "no session"),
        ("unknown WHEP viewer", "DELETE", f"/whep/{session_id}/nobody", {}, 404, "viewer"),
        ("unknown route", "GET", "/nowhere", {}, 404, "not found"),
        ("wrong method", "GET", "/offer", {}, 405, "method"),
        ("too many sessions", "POST", "/offer", offer_body(), 503, "full"),
    ]


CONTROL_GARBAGE = [
    (b"\x00\x01binary", "binary"),
    ("not json at all", "JSON"),
    ("[1, 2, 3]", "object"),
    ('"just a string"', "object"),
    ('{"type": "dance", "id": 5}', "unknown message type"),
    ('{"id": 6}', "unknown message type"),
    ('{"type": "params", "id": 7}', "params"),
    ('{"type": "params", "id": 8, "params": [1]}', "params"),
    ('{"type": "params", "id": 9, "params": {"strength": NaN}}', "NaN"),
    ('{"type": "params", "id": 10, "params": {"strength": 5}}', "strength"),
    ('{"type": "params", "id": 11, "params": {"colour": "red"}}', "colour"),
    ('{"type": "params", "id": 12, "params": {"width": 512}}', "cannot be changed"),
    ('{"type": "ping", "id": 13, "extra": true}', "extra"),
    ('{"type": "reset", "id": 14, "params": {}}', "no"),
    ("{" + " " * 70_000 + "}", "limit"),
]


async def test_bad_requests_get_4xx_json_while_another_session_streams(identity_pipeline, caplog):
    """Every request carries the admin token, so what is checked is the request itself (credentials: test_ownership.py)."""
    caplog.set_level(logging.INFO)
    offer, audio_offer, h264_offer = await make_offer(), await make_offer("audio"), await make_offer(codecs=["H264"])
    async with running_server(identity_pipeline, max_sessions=1, max_body_bytes=MAX_BODY, codecs=("VP8",), token=ADMIN_TOKEN) as server:
        track = MarkerVideoTrack()
        peer = await connect_offer(server.base_url, track, token=ADMIN_TOKEN)
        try:
            await peer.wait_for_frames(3)
            for name, method, path, kwargs, expected, word in http_cases(offer, audio_offer, h264_offer, peer.session_id):
                kwargs = {**kwargs, "headers": {**bearer(ADMIN_TOKEN), **kwargs.get("headers", {})}}
                status, body, headers = await server.request(method, path, **kwargs)
                assert status == expected, f"{name}: got {status} {body}"
                assert headers["Content-Type"].startswith("application/json"), name
                assert isinstance(body, dict) and set(body) == {"error"}, f"{name}: {body}"
                assert word.lower() in body["error"].lower(), f"{name}: {body['error']!r} does not mention {word!r}"
                frames_before = len(peer.frames)
                await peer.wait_until(lambda: len(peer.frames) > frames_before, 10, f"the other session to keep streaming after {name}")
            assert list(server.context.manager.sessions) == [peer.session_id]
        finally:
            await peer.close()
    assert tracebacks(caplog.records) == []


async def test_garbage_on_the_data_channel_gets_error_acks(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(identity_pipeline) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack())
        try:
            await peer.wait_for_frames(2)
            for raw, word in CONTROL_GARBAGE:
                acks_before = len([m for m in peer.messages if m.get("type") == "ack"])
                await peer.send_raw(raw)
                await peer.wait_until(lambda: len([m for m in peer.messages if m.get("type") == "ack"]) > acks_before, 10, f"an ack for {raw!r:.40}")
                ack = [m for m in peer.messages if m.get("type") == "ack"][-1]
                assert ack["ok"] is False and set(ack) == {"type", "id", "ok", "error"}, ack
                assert word.lower() in ack["error"].lower(), f"{raw!r:.40}: {ack['error']}"
                frames_before = len(peer.frames)
                await peer.wait_until(lambda: len(peer.frames) > frames_before, 10, "frames to keep coming")
            ids = [m["id"] for m in peer.messages if m.get("type") == "ack"]
            # ids are echoed when the message parsed as a JSON object (NaN makes the whole message invalid JSON)
            assert ids == [None] * 4 + [5, 6, 7, 8, None, 10, 11, 12, 13, 14, None]
            assert (await peer.control({"type": "ping"}))["ok"] is True, "the channel still works"
            acks = len(peer.messages)
            await peer.send_raw('{"type": "ping", "id": {"not": "a scalar"}}')
            await peer.wait_until(lambda: any(m.get("type") == "ack" for m in peer.messages[acks:]), 10, "the ack of an unreadable id")
            assert [m for m in peer.messages[acks:] if m.get("type") == "ack"] == [{"type": "ack", "id": None, "ok": True, "error": None}]
        finally:
            await peer.close()
    assert tracebacks(caplog.records) == []
