"""The OBS control script: its plain module against a real server, and its OBS glue against a stand-in ``obspython``.

``integrations/obs`` is not a package (OBS loads the script from its folder),
so the tests put that folder on ``sys.path`` as OBS does. The module sends
with blocking ``urllib`` (OBS's Python has nothing else), so every call runs
in a thread here: the server shares the test's event loop.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from .helpers import ADMIN_TOKEN, poll, running_server
from .obs_like import ColourTrack, obs_publish

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "obs"))
import streamgen_control as control  # noqa: E402

RED = (200, 40, 40)


def test_the_target_comes_from_whatever_url_the_user_pasted():
    source = control.parse_target("http://127.0.0.1:8000/obs#stream=studio&secret=s3cret")
    assert source == control.Target("http://127.0.0.1:8000", "studio", "s3cret")
    assert source.stream_url == "http://127.0.0.1:8000/api/streams/studio"
    assert control.parse_target("http://h:8000/whip", "tok") == control.Target("http://h:8000", "default", "tok")
    assert control.parse_target("https://h/gen/whip/streams/b-2/", "tok") == control.Target("https://h/gen", "b-2", "tok")
    assert control.parse_target("http://h:8000", "tok").stream == "default"
    assert control.parse_target("http://h:8000/obs#stream=a&secret=s", "typed").credential == "typed"
    for url, credential, words in (("h:8000/whip", "t", "http://"), ("ftp://h/whip", "t", "http://"), ("http://h:8000/whip", "", "no credential")):
        with pytest.raises(control.ControlError) as error:
            control.parse_target(url, credential)
        assert words in str(error.value)


def test_obs_fields_become_live_parameters_and_empty_text_is_left_out():
    fields = {"prompt": "a watercolor", "negative_prompt": " ", "strength": 0.5, "seed": 7.0}
    assert control.params_of(fields) == {"prompt": "a watercolor", "strength": 0.5, "seed": 7}
    assert 0 <= control.random_seed() <= control.MAX_OBS_SEED


async def test_params_requests_are_accepted_by_the_server_and_its_errors_reported(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        publisher = await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), ADMIN_TOKEN)
        try:
            session = server.context.manager.get(publisher.session_id)
            target = control.parse_target(publisher.browser_source)
            answer = await asyncio.to_thread(control.send, control.params_request(target, {"prompt": "ink", "strength": 0.6, "seed": 11}))
            assert answer["session"] == session.id and session.params["strength"] == 0.6 and session.params["seed"] == [[11, 1.0]]
            assert "session " + session.id in control.describe_answer(answer)

            with_token = control.parse_target(server.base_url + "/whip/streams/studio", ADMIN_TOKEN)
            status = await asyncio.to_thread(control.send, control.status_request(with_token))
            assert status["session"]["id"] == session.id

            failures = [
                (control.params_request(target, {"strength": 2}), 400, "strength must be between 0 and 1"),
                (control.params_request(target, {"colour": "red"}), 400, "unknown parameter"),
                (control.params_request(control.Target(target.base_url, "studio", "wrong"), {"seed": 1}), 401, "follow secret"),
            ]
            for request, code, words in failures:
                with pytest.raises(control.ControlError) as error:
                    await asyncio.to_thread(control.send, request)
                assert error.value.status == code and words in error.value.message, error.value
                assert str(error.value).startswith(f"streamgen answered {code}: ")
            assert session.params["strength"] == 0.6
        finally:
            await publisher.stop()

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(control.ControlError) as error:
        await asyncio.to_thread(control.send, control.status_request(control.Target(f"http://127.0.0.1:{port}", "studio", "s")), 2.0)
    assert error.value.status is None and f"cannot reach streamgen at http://127.0.0.1:{port}" in str(error.value)


async def test_the_updater_sends_what_changed_from_its_own_thread(identity_pipeline):
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        publisher = await obs_publish(server.base_url + "/whip", ColourTrack(RED), ADMIN_TOKEN)
        lines: list[str] = []
        updater = control.Updater(report=lines.append)
        try:
            session = server.context.manager.get(publisher.session_id)
            url = publisher.browser_source
            fields = {"prompt": "", "negative_prompt": "", "strength": 0.35, "seed": 2}
            updater.fields_changed(url, "", fields)  # the script loads: nothing is sent
            assert await asyncio.to_thread(updater.wait_idle, 10) and lines == []

            for text in ("a", "a w", "a wa", "a watercolor"):  # typing: merged while a request is in flight
                updater.fields_changed(url, "", {**fields, "prompt": text})
            assert await asyncio.to_thread(updater.wait_idle, 10)
            assert session.params["prompt"] == [["a watercolor", 1.0]] and session.params["seed"] == [[2, 1.0]]
            assert lines and all(line.startswith("sent prompt;") for line in lines), lines

            lines.clear()
            updater.fields_changed(url, "", {**fields, "prompt": "a watercolor", "strength": 1.5})
            assert await asyncio.to_thread(updater.wait_idle, 10)
            assert lines == ["streamgen answered 400: strength must be between 0 and 1, got 1.5"]

            lines.clear()
            updater.send_all(url, "", {**fields, "prompt": "ink", "strength": 0.4})
            updater.check(url, "")
            assert await asyncio.to_thread(updater.wait_idle, 10)
            assert session.params["prompt"] == [["ink", 1.0]] and session.params["strength"] == 0.4
            live = f"stream 'default': session {session.id} is live"
            assert lines == [f"sent prompt, seed, strength; {live}", live]

            lines.clear()
            updater.check("not a url", "")
            assert await asyncio.to_thread(updater.wait_idle, 10) and "http://" in lines[0]
        finally:
            await asyncio.to_thread(updater.close)
            await publisher.stop()


# ----------------------------------------------------------------- OBS glue
class FakeObs(types.ModuleType):
    """The few ``obspython`` calls the glue makes, over plain dicts (settings) and lists (properties)."""

    OBS_TEXT_DEFAULT, OBS_TEXT_PASSWORD, OBS_TEXT_MULTILINE = 0, 1, 2

    def __init__(self) -> None:
        super().__init__("obspython")
        self.defaults: dict[str, Any] = {}

    def obs_data_set_default_string(self, data, name, value):
        self.defaults[name] = value

    obs_data_set_default_double = obs_data_set_default_int = obs_data_set_default_string

    def _get(self, data, name):
        return data.get(name, self.defaults.get(name))

    def obs_data_get_string(self, data, name):
        return self._get(data, name) or ""

    def obs_data_get_double(self, data, name):
        return float(self._get(data, name) or 0.0)

    def obs_data_get_int(self, data, name):
        return int(self._get(data, name) or 0)

    def obs_data_set_int(self, data, name, value):
        data[name] = value

    def obs_properties_create(self):
        return []

    def obs_properties_add_text(self, props, name, description, kind):
        props.append((name, "text", kind))

    def obs_properties_add_float_slider(self, props, name, description, low, high, step):
        props.append((name, "float", (low, high)))

    def obs_properties_add_int(self, props, name, description, low, high, step):
        props.append((name, "int", (low, high)))

    def obs_properties_add_button(self, props, name, text, callback):
        props.append((name, "button", callback))


async def test_the_obs_glue_sends_property_changes_and_random_seeds(identity_pipeline, monkeypatch, capsys):
    fake = FakeObs()
    monkeypatch.setitem(sys.modules, "obspython", fake)
    monkeypatch.delitem(sys.modules, "streamgen_obs", raising=False)
    import streamgen_obs as script  # noqa: PLC0415

    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server:
        publisher = await obs_publish(server.base_url + "/whip/streams/studio", ColourTrack(RED), ADMIN_TOKEN)
        try:
            session = server.context.manager.get(publisher.session_id)
            script.script_defaults({})
            props = {name: (kind, extra) for name, kind, extra in script.script_properties()}
            assert set(props) == {"server_url", "token", "prompt", "negative_prompt", "strength", "seed", "random_seed", "send_all", "check"}
            assert props["token"] == ("text", FakeObs.OBS_TEXT_PASSWORD) and props["strength"] == ("float", (0.0, 1.0))

            settings = {"server_url": server.base_url + "/whip/streams/studio", "token": ADMIN_TOKEN}
            script.script_load(settings)
            script.script_update(settings)
            settings["prompt"] = "from obs"
            script.script_update(settings)
            await poll(lambda: session.params["prompt"] == [["from obs", 1.0]], 10, "the prompt typed in OBS to reach the session")

            assert props["random_seed"][1](None, None) is True
            seed = settings["seed"]
            await poll(lambda: session.params["seed"] == [[seed, 1.0]], 10, "the random seed to reach the session")
        finally:
            await asyncio.to_thread(script.script_unload)
            await publisher.stop()
    assert "[streamgen] sent prompt;" in capsys.readouterr().out
