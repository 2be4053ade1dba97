"""The torch-free list of preset names (for fast command-line checks) names exactly the presets the loaders know."""

from streamgen.models.loading.presets import IMAGE_PRESETS
from streamgen.models.loading.video_presets import VIDEO_PRESETS
from streamgen.preset_names import IMAGE_PRESET_NAMES, VIDEO_PRESET_NAMES


def test_preset_names_match_the_loaders_tables():
    assert IMAGE_PRESET_NAMES == tuple(IMAGE_PRESETS)
    assert VIDEO_PRESET_NAMES == tuple(VIDEO_PRESETS)
