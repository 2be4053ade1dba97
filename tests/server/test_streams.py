"""WHIP stream keys: the browser-source URL a publish gets, what a key's follow secret may do, and nothing more.

Publishers are OBS-like (:mod:`.obs_like`): H.264 only, no candidates, the
bearer token of OBS's stream settings, ``DELETE`` with that token on Stop.
"""

from __future__ import annotations

import logging

import pytest

from streamgen.errors import CapacityError
from streamgen.client.webrtc import ServerError, whep_view
from streamgen.server.http.http_errors import NotFoundError, UnauthorizedError
from streamgen.server.sessions.streams import StreamRegistry

from .helpers import ADMIN_TOKEN, bearer, poll, real_offer_sdp, running_server, tracebacks
from .obs_like import ColourTrack, obs_publish

RED = (200, 40, 40)


async def test_a_whip_answer_links_the_browser_source_of_its_stream_key(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        default = await obs_publish(server.base_url + "/whip", ColourTrack(RED), ADMIN_TOKEN)
        studio = await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), ADMIN_TOKEN)
        again = None
        try:
            assert default.link == (
                f'<{server.base_url}/obs#stream=default&secret={default.stream_secret}>; rel="related"; type="text/html"; title="OBS browser source"'
            )
            assert studio.browser_source == f"{server.base_url}/obs#stream=studio&secret={studio.stream_secret}"
            assert len(default.stream_secret) >= 32 and default.stream_secret != studio.stream_secret
            assert default.resource == f"{server.base_url}/whip/{default.session_id}", "the session resource is unchanged"

            again = await obs_publish(server.base_url + "/whip", ColourTrack(RED), ADMIN_TOKEN)  # a second OBS on the same key
            assert again.browser_source == default.browser_source
            assert default.session_id in server.context.manager.sessions, "a new publish leaves the older one running"
            status, body, _ = await server.request("GET", "/api/streams/default", headers=bearer(default.stream_secret))
            assert body["session"]["id"] == again.session_id and body["live_sessions"] == [default.session_id, again.session_id]

            status, body, _ = await server.request("GET", "/api/streams", headers=bearer(ADMIN_TOKEN))
            assert status == 200 and sorted(body["streams"], key=lambda s: s["stream"]) == [
                {"stream": "default", "session": again.session_id, "live_sessions": 2},
                {"stream": "studio", "session": studio.session_id, "live_sessions": 1},
            ]
            assert default.stream_secret not in str(body), "listing shows no secret"
        finally:
            for publisher in (default, studio, again):
                if publisher is not None:
                    await publisher.stop()


async def test_a_follow_secret_reads_watches_and_steers_its_stream_and_nothing_else(identity_pipeline, caplog):
    caplog.set_level(logging.INFO)
    offer = await real_offer_sdp()
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        publisher = await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), ADMIN_TOKEN)
        other = await obs_publish(server.base_url + "/whip/streams/other", ColourTrack(RED), ADMIN_TOKEN)
        follow = bearer(publisher.stream_secret)
        session = server.context.manager.get(publisher.session_id)
        viewers = []
        try:
            status, body, _ = await server.request("GET", "/api/streams/studio", headers=follow)
            assert status == 200 and body["session"]["id"] == session.id and body["browser_source"] == publisher.browser_source

            status, body, _ = await server.request("PATCH", "/api/streams/studio/params", json={"prompt": "ink", "seed": 9}, headers=follow)
            assert status == 200 and body["session"] == session.id and body["params"]["seed"] == [[9, 1.0]]
            assert session.params["prompt"] == [["ink", 1.0]]
            status, body, _ = await server.request("PATCH", "/api/streams/studio/params", json={"strength": 3}, headers=follow)
            assert status == 400 and "strength" in body["error"]

            # WHEP through the key: the viewer leaves with the same secret
            viewer = await whep_view(server.base_url, "streams/studio", secret=publisher.stream_secret)  # POST /whep/streams/studio
            viewers.append(viewer)
            assert viewer.resource.startswith(f"{server.base_url}/whep/{session.id}/")
            await viewer.wait_for_frames(3)
            await viewer.close()
            await poll(lambda: not session.viewers, 10, "the stream's viewer to leave")

            # ... and nothing else: not the session API, not ending, not another key, not another viewer, not publishing
            owner_viewer = await whep_view(server.base_url, session.id, token=ADMIN_TOKEN)
            viewers.append(owner_viewer)
            refused = [
                ("GET", f"/api/sessions/{session.id}", {}),
                ("PATCH", f"/api/sessions/{session.id}/params", {"json": {"prompt": "x"}}),
                ("DELETE", f"/api/sessions/{session.id}", {}),
                ("DELETE", f"/whip/{session.id}", {}),
                ("POST", f"/whep/{session.id}", {"data": offer.encode(), "headers": {"Content-Type": "application/sdp"}}),
                ("DELETE", owner_viewer.resource.removeprefix(server.base_url), {}),
                ("GET", "/api/streams/other", {}),
                ("PATCH", "/api/streams/other/params", {"json": {"prompt": "x"}}),
                ("POST", "/whip/streams/studio", {"data": offer.encode(), "headers": {"Content-Type": "application/sdp"}}),
            ]
            for method, path, kwargs in refused:
                status, body, headers = await server.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **follow}})
                assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"], (method, path, status, body)
            status, _, _ = await server.request("GET", "/api/streams", headers=follow)
            assert status == 401
            assert session.id in server.context.manager.sessions and len(session.viewers) == 1

            # nothing tells an outsider which keys exist; the admin token learns it; a session's own secret is no stream credential
            answers = set()
            for key, credential in (("studio", "wrong"), ("nobody-publishes-this", "wrong"), ("studio", other.stream_secret), ("studio", None)):
                status, body, _ = await server.request("GET", f"/api/streams/{key}", headers=bearer(credential))
                assert status == 401, (key, credential)
                answers.add(body["error"] if credential is not None else "no credential")
            assert len(answers) == 2
            status, body, _ = await server.request("GET", "/api/streams/nobody-publishes-this", headers=bearer(ADMIN_TOKEN))
            assert status == 404 and "first WHIP publish" in body["error"]
            status, _, _ = await server.request("GET", "/api/streams/studio", headers=bearer(session.secret))
            assert status == 401
            status, body, _ = await server.request("GET", "/api/streams/no%20spaces", headers=follow)
            assert status == 400 and "stream key" in body["error"]

            # while nothing publishes, watching the key is a plain 404 for its follower
            assert await publisher.stop() == 200
            with pytest.raises(ServerError) as error:
                await whep_view(server.base_url, "streams/studio", secret=publisher.stream_secret)
            assert error.value.status == 404 and "nothing publishes" in error.value.body["error"]
            assert tracebacks(caplog.records) == []
        finally:
            for viewer in viewers:
                await viewer.close(delete=False)
            await publisher.close()
            await other.stop()


async def test_parameters_set_through_a_key_carry_over_to_its_next_sessions(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        first = await obs_publish(server.base_url + "/whip", ColourTrack(RED), ADMIN_TOKEN)
        follow = bearer(first.stream_secret)
        status, _, _ = await server.request("PATCH", "/api/streams/default/params", json={"prompt": "a watercolor"}, headers=follow)
        assert status == 200
        assert await first.stop() == 200

        # nothing publishes: a change is checked against the server's defaults and caps, then kept
        status, body, _ = await server.request("PATCH", "/api/streams/default/params", json={"strength": 0.6}, headers=follow)
        assert (status, body) == (200, {"stream": "default", "session": None, "params": {"prompt": "a watercolor", "strength": 0.6}})
        for bad, word in (({"strength": -1}, "strength"), ({"width": 512}, "width"), ({"num_inference_steps": 16}, "limit")):
            status, body, _ = await server.request("PATCH", "/api/streams/default/params", json=bad, headers=follow)
            assert status == 400 and word in body["error"], (bad, body)
        status, body, _ = await server.request("GET", "/api/streams/default", headers=follow)
        assert body["session"] is None and body["params"] == {"prompt": "a watercolor", "strength": 0.6}

        second = await obs_publish(server.base_url + "/whip", ColourTrack(RED), ADMIN_TOKEN)
        try:
            params = server.context.manager.get(second.session_id).params
            assert params["prompt"] == [["a watercolor", 1.0]] and params["strength"] == 0.6
        finally:
            await second.stop()


async def test_without_an_admin_token_the_first_publisher_claims_its_key(identity_pipeline):
    async with running_server(identity_pipeline) as server:
        whip_url = server.base_url + "/whip/streams/mine"
        first = await obs_publish(whip_url, ColourTrack(RED), "obs-password")
        publishers = [first]
        try:
            for token in ("someone-else", None):
                with pytest.raises(AssertionError) as refused:
                    await obs_publish(whip_url, ColourTrack(RED), token)
                assert "401" in str(refused.value) and "claimed" in str(refused.value)
            assert list(server.context.manager.sessions) == [first.session_id]
            # the follow secret cannot end the session; OBS's Stop (its bearer token) can
            status, _, _ = await server.request("DELETE", f"/whip/{first.session_id}", headers=bearer(first.stream_secret))
            assert status == 401
            second = await obs_publish(whip_url, ColourTrack(RED), "obs-password")
            publishers.append(second)
            assert second.stream_secret == first.stream_secret
            assert await first.stop() == 200 and await second.stop() == 200 and not server.context.manager.sessions

            # a key first published without a token stays open, like the server
            open_first = await obs_publish(server.base_url + "/whip", ColourTrack(RED), None)
            publishers.append(open_first)
            open_second = await obs_publish(server.base_url + "/whip", ColourTrack(RED), "anything")
            publishers.append(open_second)
            assert open_second.stream_secret == open_first.stream_secret
        finally:
            for publisher in publishers:
                await publisher.close()


@pytest.mark.parametrize(("host", "whole"), [("127.0.0.1", True), ("0.0.0.0", False)])
async def test_the_browser_source_url_is_logged_once_and_whole_only_on_loopback(identity_pipeline, caplog, host, whole):
    caplog.set_level(logging.INFO, logger="streamgen.server")
    async with running_server(identity_pipeline, token=ADMIN_TOKEN, host=host) as server:
        publishers = [await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), ADMIN_TOKEN) for _ in range(2)]
        try:
            secret = publishers[0].stream_secret
            lines = [r.getMessage() for r in caplog.records if "OBS browser source" in r.getMessage()]
            assert len(lines) == 1 and f"{server.base_url}/obs#stream=studio&secret=" in lines[0]
            assert (secret in lines[0]) is whole
            assert whole or "SECRET" in lines[0] and "#stream=studio&token=" in lines[0]
            assert [r for r in caplog.records if secret in r.getMessage()] == ([r for r in caplog.records if r.getMessage() in lines] if whole else [])
        finally:
            for publisher in publishers:
                await publisher.close()


# ------------------------------------------------------------------ registry
class FakeSession:
    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.viewers: dict[str, object] = {}


def test_the_newest_live_session_is_the_stream():
    registry = StreamRegistry()
    open_sessions = {sid: FakeSession(sid) for sid in ("s1", "s2", "s3")}
    stream, created = registry.publish("a", "s1", None, ADMIN_TOKEN, open_sessions)
    assert created and registry.current(stream, open_sessions).id == "s1"
    assert registry.publish("a", "s2", None, ADMIN_TOKEN, open_sessions) == (stream, False)
    assert registry.current(stream, open_sessions).id == "s2"
    del open_sessions["s2"]  # the newest ends: the older one still live is followed again
    assert registry.current(stream, open_sessions).id == "s1" and registry.stream_of("s2") is None
    del open_sessions["s1"]
    assert registry.current(stream, open_sessions) is None and registry.live_sessions(stream, open_sessions) == []


def test_a_full_registry_forgets_the_key_idle_longest_and_never_a_live_one():
    registry = StreamRegistry(capacity=2)
    open_sessions = {"s1": FakeSession("s1"), "s2": FakeSession("s2")}
    registry.publish("a", "s1", None, ADMIN_TOKEN, open_sessions)
    registry.publish("b", "s2", None, ADMIN_TOKEN, open_sessions)
    with pytest.raises(CapacityError):
        registry.publish("c", "s3", None, ADMIN_TOKEN, open_sessions)
    del open_sessions["s1"]  # a's session ended
    open_sessions["s3"] = FakeSession("s3")
    stream, created = registry.publish("c", "s3", None, ADMIN_TOKEN, open_sessions)
    assert created and registry.get("a") is None and registry.get("b") is not None
    assert registry.current(stream, open_sessions).id == "s3"


def test_churn_of_throwaway_keys_never_evicts_a_claim_so_the_key_cannot_be_taken_over():
    """No --token: the owner claims "studio" with its bearer token, stops streaming; an attacker publishes to 300 keys."""
    registry = StreamRegistry(capacity=8, claims_per_client=4)
    open_sessions: dict[str, FakeSession] = {"owner-1": FakeSession("owner-1")}
    registry.publish("studio", "owner-1", "owner-token", None, open_sessions, client="10.0.0.1")
    del open_sessions["owner-1"]  # OBS stopped: the key is idle, and claimed
    refused = 0
    for i in range(300):
        sid = f"junk-{i}"
        open_sessions[sid] = FakeSession(sid)
        try:
            registry.publish(f"junk{i}", sid, f"attacker-{i % 2}" if i % 3 else None, None, open_sessions, client="10.6.6.6")
        except CapacityError:
            refused += 1
        del open_sessions[sid]
    studio = registry.get("studio")
    assert studio is not None and studio.publisher_secret == "owner-token"
    with pytest.raises(UnauthorizedError):
        registry.check_publisher("studio", "attacker-1", None)
    claimed_by_attacker = [s for s in registry.all() if s.owner == "10.6.6.6"]
    assert len(claimed_by_attacker) <= 4  # its claims make room only for its own
    open_sessions["owner-2"] = FakeSession("owner-2")
    assert registry.publish("studio", "owner-2", "owner-token", None, open_sessions, client="10.0.0.1")[0] is studio


def test_a_client_at_its_claim_cap_with_every_claim_live_is_refused_and_nobody_else_loses_a_key():
    registry = StreamRegistry(capacity=8, claims_per_client=2)
    open_sessions = {sid: FakeSession(sid) for sid in ("a", "b", "c", "other")}
    registry.publish("k-other", "other", "t-other", None, open_sessions, client="10.0.0.2")
    registry.publish("k1", "a", "t", None, open_sessions, client="10.0.0.9")
    registry.publish("k2", "b", "t", None, open_sessions, client="10.0.0.9")
    with pytest.raises(CapacityError, match="already claims 2 stream keys"):
        registry.publish("k3", "c", "t", None, open_sessions, client="10.0.0.9")
    del open_sessions["a"]  # its own idle claim makes room for its next one
    registry.publish("k3", "c", "t", None, open_sessions, client="10.0.0.9")
    assert registry.get("k1") is None and registry.get("k-other") is not None


def test_follow_credentials_answer_alike_for_unknown_keys_and_wrong_secrets():
    registry = StreamRegistry()
    stream, _ = registry.publish("a", "s1", None, ADMIN_TOKEN, {"s1": FakeSession("s1")})
    assert registry.authorize("a", stream.follow_secret, ADMIN_TOKEN) is stream
    assert registry.authorize("a", ADMIN_TOKEN, ADMIN_TOKEN) is stream
    messages = set()
    for key, given in (("a", "wrong"), ("b", "wrong"), ("b", stream.follow_secret), ("a", "")):
        with pytest.raises(UnauthorizedError) as error:
            registry.authorize(key, given, ADMIN_TOKEN)
        messages.add(str(error.value))
    assert len(messages) == 1
    with pytest.raises(NotFoundError):
        registry.authorize("b", ADMIN_TOKEN, ADMIN_TOKEN)
    with pytest.raises(UnauthorizedError):
        registry.authorize("a", None, ADMIN_TOKEN)


async def test_a_follow_secret_steers_only_within_what_the_session_was_admitted_for(shared_tiny_pipeline):
    """No --token: the publisher claims the key; a follow-secret holder may restyle it, not make it costlier (or lock it out)."""
    async with running_server(shared_tiny_pipeline, default_params={"width": 64, "height": 64}) as server:
        publisher = await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), "owner-token")
        follow = bearer(publisher.stream_secret)
        try:
            for changes, expected in (
                ({"prompt": "a watercolor"}, 200),
                ({"num_inference_steps": 4}, 403),  # 2 -> 4 denoising rows per step: beyond the admitted 2
                ({"cfg_type": "full", "guidance_scale": 3.0}, 403),
                ({"num_inference_steps": 1}, 200),  # cheaper is fine
            ):
                status, body, _ = await server.request("PATCH", "/api/streams/studio/params", json=changes, headers=follow)
                assert status == expected, (changes, status, body)
                if status == 403:
                    assert "admitted for" in body["error"] and "follow secret" in body["error"]
            session = server.context.manager.get(publisher.session_id)
            status, _, _ = await server.request("PATCH", f"/api/sessions/{session.id}/params", json={"num_inference_steps": 3}, headers=bearer(session.secret))
            assert status == 200  # the publisher's own secret is not limited by this rule
        finally:
            assert await publisher.stop() == 200

        # nothing publishes: kept parameters may not make the next publish costlier than the defaults (which admission could refuse)
        status, body, _ = await server.request("PATCH", "/api/streams/studio/params", json={"num_inference_steps": 6}, headers=follow)
        assert status == 403 and "server's defaults" in body["error"]
        again = await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), "owner-token")
        try:
            assert server.context.manager.get(again.session_id).params["num_inference_steps"] == 1
        finally:
            await again.stop()
