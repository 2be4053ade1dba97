"""Property-based fuzzing of everything a client can send: params, control messages, HTTP bodies.

Whatever JSON arrives, the answer is a clear user error (ConfigError/ControlError, an HTTP 4xx
with a JSON ``error``) or success: never another exception, never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgen.errors import StreamgenError
from streamgen.params import PARAM_NAMES, parse_params
from streamgen.pipeline.video_params import VIDEO_PARAM_NAMES, parse_video_params
from streamgen.server.webrtc.control import ControlError, parse_message

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELD_NAMES = st.sampled_from(PARAM_NAMES + VIDEO_PARAM_NAMES) | st.text(max_size=12)
PARAM_OBJECTS = st.dictionaries(FIELD_NAMES, JSON, max_size=5)


@settings(max_examples=300, deadline=None)
@given(PARAM_OBJECTS)
def test_image_params_parse_or_say_what_is_wrong(values):
    try:
        parse_params(values)
    except StreamgenError as error:
        assert str(error)


@settings(max_examples=300, deadline=None)
@given(PARAM_OBJECTS)
def test_video_params_parse_or_say_what_is_wrong(values):
    try:
        parse_video_params(values)
    except StreamgenError as error:
        assert str(error)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), JSON.map(json.dumps), st.dictionaries(st.sampled_from(["type", "id", "params", "x"]), JSON).map(json.dumps)))
def test_control_messages_parse_or_say_what_is_wrong(raw):
    try:
        message = parse_message(raw)
    except ControlError as error:
        assert str(error)
    else:
        assert message["type"] in ("params", "reset", "ping")


@pytest.fixture(scope="module")
def server_url():
    """A real server on loopback, in a thread of its own so hypothesis can drive it synchronously."""
    from streamgen.pipeline.identity import IdentityPipeline

    from .helpers import running_server

    ready: dict = {}
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with running_server(IdentityPipeline()) as server:
                ready["url"] = server.base_url
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for _ in range(400):
        if "url" in ready:
            break
        threading.Event().wait(0.05)
    yield ready["url"]
    stop.set()
    thread.join(10)


def _post(url: str, path: str, body: bytes, content_type: str = "application/json", method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["sdp", "type", "params", "slo", "extra"]), JSON, max_size=4))
def test_offer_bodies_get_4xx_json_never_5xx(server_url, body):
    status, answer = _post(server_url, "/offer", json.dumps(body).encode())
    assert 400 <= status < 500, (status, answer)
    assert isinstance(answer.get("error"), str) and answer["error"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_json_get_4xx(server_url, body):
    status, answer = _post(server_url, "/offer", body)
    assert 400 <= status < 500 and answer.get("error")
