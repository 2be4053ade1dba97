"""Who may do what: a session's secret (its creator), the admin token (the operator), nobody else.

One session's secret reads, changes, watches and ends that session and
nothing else; the admin token does everything, listing included; without
credentials nothing tells whether a session exists.
"""

from __future__ import annotations

import logging

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import assume, given
from hypothesis import strategies as st

from streamgen.server.http.access import EndedSessions, authorize_session, new_session_secret
from streamgen.client.webrtc import ServerError, connect_offer, whep_view
from streamgen.server.http.http_errors import NotFoundError, UnauthorizedError
from streamgen.client.synthetic import MarkerVideoTrack

from .helpers import ADMIN_TOKEN, bearer, real_offer_sdp, running_server


def session_calls(session_id: str, offer: str) -> list[tuple[str, str, dict]]:
    """(method, path, request kwargs) of every call on one session."""
    return [
        ("GET", f"/api/sessions/{session_id}", {}),
        ("PATCH", f"/api/sessions/{session_id}/params", {"json": {"prompt": "stolen"}}),
        ("POST", f"/whep/{session_id}", {"data": offer.encode(), "headers": {"Content-Type": "application/sdp"}}),
        ("DELETE", f"/whep/{session_id}/some-viewer", {}),
        ("DELETE", f"/whip/{session_id}", {}),
        ("DELETE", f"/api/sessions/{session_id}", {}),
    ]


async def test_another_client_cannot_read_change_watch_or_end_a_session(identity_pipeline, caplog):
    caplog.set_level(logging.DEBUG)
    offer = await real_offer_sdp()
    async with running_server(identity_pipeline) as server:  # no admin token: creating is open, owning is not
        owner = await connect_offer(server.base_url, MarkerVideoTrack(), {"prompt": "mine"})
        other = await connect_offer(server.base_url, MarkerVideoTrack(), {"prompt": "theirs"})
        try:
            await owner.wait_for_frames(2)
            assert owner.secret and other.secret and owner.secret != other.secret
            unknown_answers = set()
            for method, path, kwargs in session_calls(owner.session_id, offer):
                for credential, challenge in ((None, 'Bearer realm="streamgen"'), (other.secret, 'error="invalid_token"'), ("", 'error="invalid_token"')):
                    headers = {**kwargs.get("headers", {}), **bearer(credential)}
                    status, body, response_headers = await server.request(method, path, **{**kwargs, "headers": headers})
                    assert status == 401, (method, path, credential, body)
                    assert challenge in response_headers["WWW-Authenticate"] and "secret" in body["error"]
                # a session that does not exist looks exactly the same to them
                unknown = path.replace(owner.session_id, "0123456789abcdef")
                status, body, _ = await server.request(method, unknown, **{**kwargs, "headers": {**kwargs.get("headers", {}), **bearer(other.secret)}})
                assert status == 401
                unknown_answers.add(body["error"])
            assert len(unknown_answers) == 1

            session = server.context.manager.get(owner.session_id)
            assert session.params["prompt"] == [["mine", 1.0]] and not session.viewers and not session.closed
            seen = len(owner.frames)
            await owner.wait_until(lambda: len(owner.frames) > seen, 10, "the owner's stream to go on")

            # the owner may: read, change, watch, end
            assert (await owner.describe())["params"]["prompt"] == [["mine", 1.0]]
            assert (await owner.update({"prompt": "still mine"}))["params"]["prompt"] == [["still mine", 1.0]]
            viewer = await whep_view(server.base_url, owner.session_id, secret=owner.secret)
            await viewer.wait_for_frames(2)
            status, _, _ = await server.request("DELETE", viewer.resource.removeprefix(server.base_url), headers=bearer(other.secret))
            assert status == 401 and len(session.viewers) == 1
            await viewer.close()  # DELETE /whep/{id}/{viewer} with the owner's secret
            assert not session.viewers
            await owner.end()
            assert session.closed and session.close_reason == "ended through the API (DELETE)"
            with pytest.raises(ServerError) as ended:
                await owner.describe()
            assert ended.value.status == 404 and "has ended" in str(ended.value)
            status, body, _ = await server.request("DELETE", f"/api/sessions/{owner.session_id}", headers=bearer(owner.secret))
            assert status == 200 and body["already"] == "ended through the API (DELETE)", "ending it again is no error for its owner"
            status, _, _ = await server.request("DELETE", f"/api/sessions/{owner.session_id}", headers=bearer(other.secret))
            assert status == 401, "nor a way for others to learn it existed"

            # listing everything is the operator's, and this server has no operator token
            for credential in (None, other.secret):
                status, body, _ = await server.request("GET", "/api/sessions", headers=bearer(credential))
                assert status == 403 and "--token" in body["error"]
        finally:
            for peer in (owner, other):
                await peer.close()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert owner.secret not in logged and other.secret not in logged, "secrets are never logged"


async def test_the_admin_token_reaches_every_session_and_lists_them(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        with pytest.raises(ServerError) as refused:
            await connect_offer(server.base_url, MarkerVideoTrack())
        assert refused.value.status == 401, "creating a session still needs the admin token"
        peer = await connect_offer(server.base_url, MarkerVideoTrack(), token=ADMIN_TOKEN)
        try:
            await peer.wait_for_frames(2)
            assert peer.headers == bearer(peer.secret), "after creating, the client uses the session's own secret"
            for credential in (None, "wrong", peer.secret):
                status, body, _ = await server.request("GET", "/api/sessions", headers=bearer(credential))
                assert status == 401 and "admin token" in body["error"], credential
            status, listing, _ = await server.request("GET", "/api/sessions", headers=bearer(ADMIN_TOKEN))
            assert status == 200 and [s["id"] for s in listing["sessions"]] == [peer.session_id]

            admin = bearer(ADMIN_TOKEN)
            status, body, _ = await server.request("PATCH", f"/api/sessions/{peer.session_id}/params", json={"seed": 9}, headers=admin)
            assert status == 200 and body["params"]["seed"] == [[9, 1.0]]
            status, body, _ = await server.request("GET", "/api/sessions/0123456789abcdef", headers=admin)
            assert status == 404 and "no session" in body["error"], "only with credentials does an unknown session get 404"
            status, body, _ = await server.request("GET", "/api/sessions/0123456789abcdef", headers=bearer(peer.secret))
            assert status == 401, "one session's secret says nothing about another id"
            status, body, _ = await server.request("DELETE", f"/api/sessions/{peer.session_id}", headers=admin)
            assert status == 200 and peer.session_id not in server.context.manager.sessions
        finally:
            await peer.close()


# ------------------------------------------------------------------ unit level
class FakeSession:
    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.secret = new_session_secret()


class FakeManager:
    def __init__(self, *sessions: FakeSession) -> None:
        self.sessions = {s.id: s for s in sessions}
        self.ended = EndedSessions(capacity=4)

    def get(self, session_id: str) -> FakeSession:
        if session_id not in self.sessions:
            raise NotFoundError(f"no session {session_id!r}")
        return self.sessions[session_id]

    def ended_with_secret(self, session_id: str, given: str) -> str | None:
        return self.ended.reason_for(session_id, given)


def authorize(manager: FakeManager, token: str | None, session_id: str, authorization: str | None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return authorize_session(make_mocked_request("GET", "/", headers=headers), manager, token, session_id)


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@given(credential=HEADER_TEXT, scheme=st.sampled_from(["Bearer", "bearer", "Basic", "Token"]), target=st.sampled_from(["a", "b", "gone"]))
def test_no_guessed_credential_opens_a_session(credential, scheme, target):
    assume(credential.strip() != "the-admin-token")
    a, b = FakeSession("a"), FakeSession("b")
    manager = FakeManager(a, b)
    with pytest.raises(UnauthorizedError) as refused:
        authorize(manager, "the-admin-token", target, f"{scheme} {credential}")
    assert refused.value.invalid


def test_a_secret_opens_its_session_only_and_the_admin_token_all():
    a, b = FakeSession("a"), FakeSession("b")
    manager = FakeManager(a, b)
    assert authorize(manager, None, "a", f"Bearer {a.secret}") is a
    assert authorize(manager, None, "a", f"bearer   {a.secret}  ") is a, "the scheme is case-insensitive, spaces around the secret do not count"
    assert authorize(manager, "adm", "b", "Bearer adm") is b
    for session_id, header in (("a", f"Bearer {b.secret}"), ("b", f"Bearer {a.secret}"), ("a", "Bearer adm"), ("a", a.secret)):
        with pytest.raises(UnauthorizedError):
            authorize(manager, None, session_id, header)
    with pytest.raises(UnauthorizedError) as missing:
        authorize(manager, "adm", "a", None)
    assert not missing.value.invalid
    with pytest.raises(NotFoundError):
        authorize(manager, "adm", "nope", "Bearer adm")


def test_an_ended_session_answers_its_owner_404_for_a_while():
    manager = FakeManager()
    secrets = {f"s{i}": new_session_secret() for i in range(6)}
    for session_id, secret in secrets.items():
        manager.ended.remember(session_id, secret, f"reason {session_id}")
    with pytest.raises(NotFoundError, match="reason s5"):
        authorize(manager, None, "s5", f"Bearer {secrets['s5']}")
    with pytest.raises(UnauthorizedError):
        authorize(manager, None, "s5", f"Bearer {secrets['s4']}")
    with pytest.raises(UnauthorizedError):  # only the last 4 are remembered
        authorize(manager, None, "s0", f"Bearer {secrets['s0']}")


def test_session_secrets_are_long_random_and_url_safe():
    secrets = {new_session_secret() for _ in range(200)}
    assert len(secrets) == 200
    assert all(len(s) >= 32 and s.replace("-", "").replace("_", "").isalnum() for s in secrets)
