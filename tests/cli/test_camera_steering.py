"""streamgen camera loads the ControlNets and estimators its own session names (a local user asked for them)."""

from __future__ import annotations

from streamgen.commands.camera import steering_of


def test_the_local_sessions_controlnets_and_estimators_are_loaded_at_start():
    settings = {
        "controlnets": [
            {"model": "tiny", "preprocessor": "canny"},
            {"model": "depth-sd15", "preprocessor": "depth"},
            {"model": "tiny", "preprocessor": "pose", "preprocessor_settings": {"model": "tiny"}},
        ]
    }
    assert steering_of(settings) == {
        "controlnets": ("tiny", "depth-sd15"),
        "preprocessor_models": ("depth=depth-anything/Depth-Anything-V2-Small-hf", "pose=tiny"),
    }
    assert steering_of({}) == {"controlnets": (), "preprocessor_models": ()}
    assert steering_of({"controlnets": "nonsense"}) == {"controlnets": (), "preprocessor_models": ()}
