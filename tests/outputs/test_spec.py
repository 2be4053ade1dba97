"""``--output`` values: each form, the mistakes, and the sinks they become."""

from __future__ import annotations

import pytest

from streamgen.errors import ConfigError
from streamgen.outputs.file_sink import FileSink
from streamgen.outputs.spec import OutputSpec, SinkSettings, open_sinks, parse_output, parse_outputs
from streamgen.outputs.virtualcam import VirtualCameraSink
from streamgen.outputs.window import WindowSink


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("virtualcam", OutputSpec("virtualcam")),
        ("virtualcam:/dev/video10", OutputSpec("virtualcam", "/dev/video10")),
        ("file:out.mp4", OutputSpec("file", "out.mp4")),
        ("file:C:\\videos\\out.mp4", OutputSpec("file", "C:\\videos\\out.mp4")),
        ("window", OutputSpec("window")),
        ("whep", OutputSpec("whep")),
    ],
)
def test_forms(text, spec):
    assert parse_output(text) == spec
    assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("out.mp4", "for a video file write file:out.mp4"),
        ("file:", "give the file after 'file:'"),
        ("window:big", "is not an output"),
        ("obs", "virtualcam[:DEVICE], file:PATH, window or whep"),
    ],
)
def test_mistakes(text, needle):
    with pytest.raises(ConfigError, match=None) as error:
        parse_output(text)
    assert needle in str(error.value)


def test_an_output_given_twice(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        parse_outputs([f"file:{tmp_path}/a.mp4", f"file:{tmp_path}/../{tmp_path.name}/a.mp4"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_outputs(["window", "window"])
    assert len(parse_outputs(["virtualcam:/dev/video10", "virtualcam:/dev/video11", "whep", "window"])) == 4


def test_sinks_for_specs(tmp_path):
    specs = parse_outputs([f"file:{tmp_path}/a.mp4", "virtualcam", "window", "whep"])
    sinks = open_sinks(specs, SinkSettings(fps=30, codec="mpeg4"))
    assert [type(s) for s in sinks] == [FileSink, VirtualCameraSink, WindowSink], "whep has no local sink"
    assert [s.realtime for s in sinks] == [False, True, True]
    assert all(s.frames_written == 0 for s in sinks)
