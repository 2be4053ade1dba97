"""OBS script: steer the streamgen stream OBS publishes, from Tools → Scripts.

Load it in OBS (Tools → Scripts → +). Its properties are the server (the
browser-source URL streamgen gave for the stream, or the WHIP server URL),
a secret or token, and the stream's prompt, negative prompt, strength and
seed, with a "Random seed" button. A change is sent at once to
streamgen's stream API for the stream key, so it reaches whichever session
OBS is publishing now and the next ones. Results and errors appear in the
Script Log (Tools → Scripts → Script Log).

Only the OBS glue lives here; the requests are built and sent by
``streamgen_control.py`` beside it (standard library only, tested outside
OBS). See docs/obs.md.
"""

from __future__ import annotations

from typing import Any

import obspython as obs  # provided by OBS; this file runs inside OBS only
import streamgen_control as control  # OBS puts this script's folder on sys.path

_updater: control.Updater | None = None
_settings: Any = None  # this script's OBS settings, kept for the buttons


def script_description() -> str:
    return (
        "<b>streamgen</b>: change the prompt, negative prompt, strength and seed of the stream OBS publishes to streamgen (WHIP).<br>"
        "Server: paste the browser-source URL streamgen gave for the stream (it holds the stream's secret), "
        "or the WHIP server URL with the admin token below. Results go to the Script Log. See docs/obs.md."
    )


def script_defaults(settings: Any) -> None:
    obs.obs_data_set_default_string(settings, "server_url", "http://127.0.0.1:8000/whip")
    obs.obs_data_set_default_double(settings, "strength", 0.35)
    obs.obs_data_set_default_int(settings, "seed", 2)


def script_properties() -> Any:
    props = obs.obs_properties_create()
    obs.obs_properties_add_text(props, "server_url", "streamgen URL", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_text(props, "token", "Secret or token (optional)", obs.OBS_TEXT_PASSWORD)
    obs.obs_properties_add_text(props, "prompt", "Prompt", obs.OBS_TEXT_MULTILINE)
    obs.obs_properties_add_text(props, "negative_prompt", "Negative prompt", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_float_slider(props, "strength", "Strength", 0.0, 1.0, 0.01)
    obs.obs_properties_add_int(props, "seed", "Seed", 0, control.MAX_OBS_SEED, 1)
    obs.obs_properties_add_button(props, "random_seed", "Random seed", on_random_seed)
    obs.obs_properties_add_button(props, "send_all", "Send all settings now", on_send_all)
    obs.obs_properties_add_button(props, "check", "Check connection", on_check)
    return props


def script_load(settings: Any) -> None:
    script_update(settings)


def script_update(settings: Any) -> None:
    global _settings
    _settings = settings
    _get_updater().fields_changed(*_connection(settings), _fields(settings))


def script_unload() -> None:
    global _updater
    if _updater is not None:
        _updater.close()
        _updater = None


def on_random_seed(props: Any, prop: Any) -> bool:
    obs.obs_data_set_int(_settings, "seed", control.random_seed())
    script_update(_settings)  # setting a value from a button does not call script_update by itself
    return True  # redraw the properties: the new seed shows


def on_send_all(props: Any, prop: Any) -> bool:
    _get_updater().send_all(*_connection(_settings), _fields(_settings))
    return False


def on_check(props: Any, prop: Any) -> bool:
    _get_updater().check(*_connection(_settings))
    return False


def _get_updater() -> control.Updater:
    global _updater
    if _updater is None:
        _updater = control.Updater(report=lambda line: print(f"[streamgen] {line}"))
    return _updater


def _connection(settings: Any) -> tuple[str, str]:
    return obs.obs_data_get_string(settings, "server_url"), obs.obs_data_get_string(settings, "token")


def _fields(settings: Any) -> dict[str, Any]:
    return {
        "prompt": obs.obs_data_get_string(settings, "prompt"),
        "negative_prompt": obs.obs_data_get_string(settings, "negative_prompt"),
        "strength": obs.obs_data_get_double(settings, "strength"),
        "seed": obs.obs_data_get_int(settings, "seed"),
    }
