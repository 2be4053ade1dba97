"""``file:PATH`` keeps each picture's time and finishes the file on close."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from streamgen.outputs.file_sink import FileSink
from streamgen.outputs.sink import Picture
from tests.cli.media import decode, moving_pattern

TIME_BASE = Fraction(1, 90000)


def test_pictures_keep_their_times(tmp_path):
    path = tmp_path / "out.mkv"
    sink = FileSink(path, "ffv1", Fraction(30))
    assert sink.describe().endswith("nothing written")
    times = [0.0, 0.1, 0.25, 0.3]
    for i, at in enumerate(times):
        sink.write(Picture(moving_pattern(i, 64, 48), round(at * 90000), TIME_BASE))
    sink.write(Picture(moving_pattern(9, 64, 48), round(0.3 * 90000), TIME_BASE))  # a repeated time is not written twice
    sink.close()
    sink.close()
    frames, decoded = decode(path)
    assert decoded == pytest.approx(times, abs=1e-3)
    assert frames[0].shape == (48, 64, 3) and float(np.abs(frames[1].astype(int) - moving_pattern(1, 64, 48)).mean()) < 4
    assert sink.frames_written == 4
    assert sink.describe() == f"file {path} (ffv1, 64x48, 4 frames)"
