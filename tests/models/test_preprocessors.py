"""ControlNet preprocessors: the frames-in / control-image-out contract, each one's behaviour, the bank, the settings schema."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings as hyp_settings, strategies as st

import streamgen.models.preprocessors.bank as bank_module
from streamgen.errors import ConfigError, InputError, ModelLoadError
from streamgen.models.preprocessors import (
    Pose,
    Preprocessor,
    PreprocessorBank,
    build_tiny_depth_model,
    draw_pose,
    heatmaps_to_keypoints,
)
from streamgen.models.preprocessors.depth import model_input_size
from streamgen.models.preprocessors.pose import letterbox
from streamgen.models.preprocessors.pose_drawing import LIMB_BRIGHTNESS, palette
from streamgen.preprocessor_settings import (
    PREPROCESSOR_NAMES,
    CannySettings,
    DepthSettings,
    PoseSettings,
    default_preprocessor_settings,
    parse_preprocessor_settings,
)

# Model-based preprocessors run with random tiny models built in code.
TEST_VALUES = {name: {} for name in PREPROCESSOR_NAMES}
TEST_VALUES["depth"] = {"model": "tiny", "resolution": 56}
TEST_VALUES["pose"] = {"model": "tiny", "min_confidence": 0.0}
SIZES = [(64, 48), (48, 64), (37, 53)]


@pytest.fixture(scope="module")
def bank():
    return PreprocessorBank()


def frames_of(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Noise plus a bright rectangle and a dark line: something for every detector to find."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.2 * torch.rand(n, 3, height, width, generator=g)
    x[:, :, height // 4 : height // 2, width // 4 : width // 2] = 0.9
    x[:, :, (3 * height) // 4, :] = 0.0
    return x


def run(bank, name, frames, previous=None, **values):
    settings = parse_preprocessor_settings(name, {**TEST_VALUES[name], **values})
    return bank.get(name, settings)(frames, settings, previous)


def square(height=48, width=48) -> torch.Tensor:
    x = torch.zeros(1, 3, height, width)
    x[:, :, 16:32, 16:32] = 1.0
    return x


# --- the contract, for every preprocessor -------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", PREPROCESSOR_NAMES)
def test_shape_dtype_device_range_and_determinism(bank, name, size):
    frames = frames_of(2, *size)
    first = run(bank, name, frames)
    second = run(bank, name, frames.clone())
    assert first.shape == frames.shape
    assert first.dtype == frames.dtype and first.device == frames.device
    assert torch.isfinite(first).all()
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, second)
    assert isinstance(bank.get(name, parse_preprocessor_settings(name, TEST_VALUES[name])), Preprocessor)


@pytest.mark.parametrize("name", PREPROCESSOR_NAMES)
def test_a_frame_in_a_batch_gives_what_it_gives_alone(bank, name):
    frames = torch.cat([frames_of(1, 64, 48, seed=1), frames_of(1, 64, 48, seed=2)])
    batched = run(bank, name, frames)
    for i in range(2):
        torch.testing.assert_close(batched[i : i + 1], run(bank, name, frames[i : i + 1]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", PREPROCESSOR_NAMES)
def test_half_precision_frames_come_back_in_half_precision(bank, name):
    frames = frames_of(1, 32, 32).half()
    out = run(bank, name, frames)
    assert out.dtype == torch.float16 and out.shape == frames.shape
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", PREPROCESSOR_NAMES)
def test_bad_frames_and_bad_settings_are_refused(bank, name):
    p = bank.get(name, parse_preprocessor_settings(name, TEST_VALUES[name]))
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        p(torch.rand(3, 8, 8), parse_preprocessor_settings(name, TEST_VALUES[name]))
    with pytest.raises(InputError, match="floating point"):
        p(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), parse_preprocessor_settings(name, TEST_VALUES[name]))
    other = "blur" if name != "blur" else "canny"
    with pytest.raises(ConfigError, match=f"{name} settings must be"):
        p(frames_of(1, 16, 16), default_preprocessor_settings(other))


def test_only_feedback_uses_the_previous_output(bank):
    users = [n for n in PREPROCESSOR_NAMES if bank.get(n, parse_preprocessor_settings(n, TEST_VALUES[n])).uses_previous_output]
    assert users == ["feedback"]


# --- what each one does ------------------------------------------------------------------


def test_passthrough_is_the_frame(bank):
    frames = frames_of(2, 40, 24)
    assert torch.equal(run(bank, "passthrough", frames), frames)


def test_canny_finds_the_border_of_a_square_and_nothing_else(bank):
    edges = run(bank, "canny", square())[0]
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(edges[0], edges[1]) and torch.equal(edges[0], edges[2])
    assert edges[0, 15:17, 20:28].sum() > 0 and edges[0, 31:33, 20:28].sum() > 0  # top and bottom sides
    assert edges[0, :10].sum() == 0 and edges[0, 20:28, 20:28].sum() == 0  # far outside, deep inside


def test_canny_thresholds_change_the_edges(bank):
    frames = frames_of(1, 64, 64)
    counts = [run(bank, "canny", frames, low_threshold=lo, high_threshold=hi).sum().item() for lo, hi in [(0.02, 0.05), (0.1, 0.2), (0.4, 0.8)]]
    assert counts[0] > counts[1] > counts[2]


def test_soft_edge_lights_boundaries_and_leaves_flat_areas_black(bank):
    out = run(bank, "soft_edge", square(), threshold=0.0, sigma=1.0)[0, 0]
    assert out.max() == pytest.approx(1.0)
    assert out[16, 24] > 0.3 and out[24, 16] > 0.3
    assert out[:8, :8].max() < 1e-3 and out[22:26, 22:26].max() < 1e-3
    smoother = run(bank, "soft_edge", square(), threshold=0.0, sigma=3.0)[0, 0]
    assert not torch.equal(out, smoother) and (smoother > 0).sum() > (out > 0).sum()
    assert (run(bank, "soft_edge", frames_of(1, 48, 48), threshold=0.5) > 0).sum() < (run(bank, "soft_edge", frames_of(1, 48, 48), threshold=0.0) > 0).sum()


def test_lineart_turns_a_dark_stroke_into_a_white_line(bank):
    frames = torch.ones(1, 3, 48, 48)
    frames[:, :, 24, 8:40] = 0.0
    out = run(bank, "lineart", frames)[0, 0]
    assert out[24, 12:36].min() > 0.8
    assert out[:16].max() == 0 and out[32:].max() == 0
    # a bright stroke on black is not ink: nothing on the stroke itself
    assert run(bank, "lineart", 1.0 - frames)[0, 0, 24, 12:36].max() == 0


def test_blur_sigma_changes_how_much_detail_is_left(bank):
    frames = frames_of(1, 48, 48)
    spread = [run(bank, "blur", frames, sigma=s).std().item() for s in (0.5, 2.0, 8.0)]
    assert frames.std().item() > spread[0] > spread[1] > spread[2]
    flat = torch.full((1, 3, 20, 30), 0.25)
    torch.testing.assert_close(run(bank, "blur", flat, sigma=40.0), flat)


def test_tile_factor_one_keeps_the_frame_and_larger_factors_lose_detail(bank):
    frames = frames_of(1, 64, 48)
    torch.testing.assert_close(run(bank, "tile", frames, factor=1), frames)
    errors = [(run(bank, "tile", frames, factor=f) - frames).abs().mean().item() for f in (2, 4, 16)]
    assert 0 < errors[0] < errors[1] < errors[2]
    flat = torch.full((1, 3, 40, 24), 0.6)
    torch.testing.assert_close(run(bank, "tile", flat, factor=8), flat)


def test_feedback_is_the_previous_output_or_the_frame(bank):
    frames, previous = frames_of(2, 32, 24, seed=1), frames_of(2, 32, 24, seed=2)
    assert torch.equal(run(bank, "feedback", frames), frames)
    assert torch.equal(run(bank, "feedback", frames, previous), previous)
    torch.testing.assert_close(run(bank, "feedback", frames, previous, mix=0.25), 0.75 * frames + 0.25 * previous)
    assert torch.equal(run(bank, "feedback", frames, previous[:1]), previous[:1].expand(2, -1, -1, -1))
    assert run(bank, "feedback", frames, frames_of(2, 64, 48)).shape == frames.shape
    with pytest.raises(InputError, match="previous must have shape"):
        run(bank, "feedback", frames, torch.rand(3, 3, 32, 24))


def test_depth_input_is_a_multiple_of_the_patch_near_the_resolution():
    assert model_input_size(480, 640, 518) == (518, 686)
    assert model_input_size(64, 48, 56) == (70, 56)
    assert all(side % 14 == 0 for side in model_input_size(37, 53, 100))


def test_depth_resolution_changes_the_output_and_it_is_normalised(bank):
    frames = frames_of(1, 64, 48)
    low = run(bank, "depth", frames, resolution=56)
    high = run(bank, "depth", frames, resolution=112)
    assert not torch.equal(low, high)
    assert low.max() == pytest.approx(1.0) and low.min() == 0
    assert torch.equal(low[:, 0], low[:, 1]) and torch.equal(low[:, 0], low[:, 2])


def test_tiny_models_are_the_same_for_a_seed():
    a, b, c = build_tiny_depth_model(0), build_tiny_depth_model(0), build_tiny_depth_model(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_heatmap_peaks_become_keypoints_with_their_confidence():
    heatmaps = torch.zeros(1, 2, 8, 6)
    heatmaps[0, 0, 5, 2] = 0.9
    heatmaps[0, 1, 1, 4], heatmaps[0, 1, 1, 5] = 0.7, 0.3  # right neighbour larger: a quarter pixel right
    points, scores = heatmaps_to_keypoints(heatmaps)
    torch.testing.assert_close(points[0], torch.tensor([[2.0, 5.0], [4.25, 1.0]]))
    torch.testing.assert_close(scores[0], torch.tensor([0.9, 0.7]))


def test_letterbox_pads_to_the_model_aspect_ratio():
    assert letterbox(64, 48, 256, 192) == (0, 0, 0, 0)
    assert letterbox(48, 64, 256, 192) == (0, 0, 18, 19)  # wide frame: pad top and bottom to 85 x 64
    assert letterbox(100, 30, 256, 192) == (22, 23, 0, 0)  # tall frame: pad left and right to 100 x 75


class _StubPoseModel(torch.nn.Module):
    """A ViTPose stand-in whose heatmaps peak where the test says, to check the mapping back to frame pixels."""

    def __init__(self, peaks):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"backbone_config": type("B", (), {"image_size": [64, 48], "num_experts": 1})()})()
        self.peaks = peaks

    def forward(self, pixel_values):
        heatmaps = torch.zeros(pixel_values.shape[0], 17, 16, 12)
        for k, (x, y) in enumerate(self.peaks):
            heatmaps[:, k, y, x] = 1.0
        return type("O", (), {"heatmaps": heatmaps})()


def test_pose_keypoints_map_back_to_frame_pixels():
    peaks = [(5, 10)] * 17
    points, scores = Pose(_StubPoseModel(peaks), "stub").keypoints(torch.rand(1, 3, 64, 48))
    torch.testing.assert_close(points[0, 0], torch.tensor([5.5 * 4 - 0.5, 10.5 * 4 - 0.5]))
    assert scores.min() == 1.0
    wide, _ = Pose(_StubPoseModel(peaks), "stub").keypoints(torch.rand(1, 3, 48, 64))  # padded by 18 rows on top, scale 64/12
    torch.testing.assert_close(wide[0, 0], torch.tensor([5.5 * 64 / 12 - 0.5, 10.5 * 85 / 16 - 0.5 - 18]))


def _skeleton(scores):
    keypoints = torch.tensor([[[24.0, 8.0]] + [[40.0, 4.0]] * 4 + [[24.0, 40.0]] * 12])  # nose, eyes and ears up, the rest low
    keypoints[0, 5], keypoints[0, 6] = torch.tensor([14.0, 20.0]), torch.tensor([34.0, 20.0])  # shoulders
    return draw_pose(keypoints, torch.tensor([scores]), 48, 48, min_confidence=0.5, line_width=4)


def test_pose_drawing_colours_joints_and_limbs_and_omits_unsure_keypoints():
    colours = palette()
    image = _skeleton([1.0] * 17)
    assert image.shape == (1, 3, 48, 48)
    torch.testing.assert_close(image[0, :, 8, 24], colours[0])  # nose: OpenPose point 0, red
    torch.testing.assert_close(image[0, :, 20, 24], colours[1])  # neck: between the shoulders
    torch.testing.assert_close(image[0, :, 14, 24], colours[12] * LIMB_BRIGHTNESS)  # neck-nose limb, the 13th
    assert image[0, :, 2, 2].sum() == 0 and image[0, :, 30, 5].sum() == 0  # background stays black
    torch.testing.assert_close(image[0, :, 22, 29], colours[0] * LIMB_BRIGHTNESS)  # neck-right shoulder limb, 2 px off its axis
    assert image[0, :, 23, 29].sum() == 0  # 3 px off: outside a limb 4 px thick
    unsure_nose = _skeleton([0.1] + [1.0] * 16)
    assert unsure_nose[0, :, 8, 24].sum() == 0 and unsure_nose[0, :, 14, 24].sum() == 0
    torch.testing.assert_close(unsure_nose[0, :, 20, 24], colours[1])
    assert _skeleton([0.0] * 17).sum() == 0


def test_pose_settings_change_the_drawing(bank):
    frames = frames_of(1, 64, 48)
    thin, thick = run(bank, "pose", frames, line_width=2), run(bank, "pose", frames, line_width=10)
    assert (thick > 0).sum() > (thin > 0).sum() > 0
    assert run(bank, "pose", frames, min_confidence=1.0).sum() == 0  # the tiny model is never that sure


# --- the bank -----------------------------------------------------------------------------


def test_the_bank_loads_a_model_once_and_reuses_it():
    bank = PreprocessorBank()
    settings = DepthSettings(model="tiny", resolution=56)
    first = bank.get("depth", settings)
    assert bank.get("depth", parse_preprocessor_settings("depth", {"resolution": 112}, settings)) is first
    assert bank.get("canny") is bank.get("canny", CannySettings(0.2, 0.3))
    assert bank.get("pose", PoseSettings(model="tiny")) is not first
    assert [(e.name, e.model, e.device, e.dtype) for e in bank.loaded()] == [
        ("depth", "tiny", "cpu", "float32"),
        ("canny", None, None, None),
        ("pose", "tiny", "cpu", "float32"),
    ]
    bank.clear()
    assert bank.loaded() == [] and bank.get("depth", settings) is not first


def test_the_bank_builds_once_when_threads_ask_together(monkeypatch):
    calls = []
    real = bank_module.build_preprocessor

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_module, "build_preprocessor", counting)
    bank, got = PreprocessorBank(), []
    threads = [threading.Thread(target=lambda: got.append(bank.get("pose", PoseSettings(model="tiny")))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["pose"] and len(got) == 4 and all(p is got[0] for p in got)


def test_a_preprocessor_refuses_settings_for_another_model(bank):
    depth = bank.get("depth", DepthSettings(model="tiny"))
    with pytest.raises(ConfigError, match="holds model 'tiny'"):
        depth(frames_of(1, 16, 16), DepthSettings())


def test_a_local_directory_loads(tmp_path):
    build_tiny_depth_model(3).save_pretrained(tmp_path)
    depth = PreprocessorBank().get("depth", DepthSettings(model=str(tmp_path), resolution=56))
    assert run_with(depth, DepthSettings(model=str(tmp_path), resolution=56)).shape == (1, 3, 32, 32)


def run_with(preprocessor, settings):
    return preprocessor(frames_of(1, 32, 32), settings)


def test_missing_models_raise_model_load_error_naming_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match=r"'nobody/no-such-depth'.*HF_HUB_OFFLINE.*hf download nobody/no-such-depth"):
        PreprocessorBank().get("depth", DepthSettings(model="nobody/no-such-depth"))
    with pytest.raises(ModelLoadError, match="no-such-dir"):
        PreprocessorBank().get("pose", PoseSettings(model="./no-such-dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty.*config.json"):
        PreprocessorBank().get("pose", PoseSettings(model=str(tmp_path / "empty")))


# --- the settings schema -----------------------------------------------------------------


def test_defaults_and_round_trip():
    assert default_preprocessor_settings("canny") == CannySettings()
    assert default_preprocessor_settings("depth").model == "depth-anything/Depth-Anything-V2-Small-hf"
    assert default_preprocessor_settings("pose").model == "usyd-community/vitpose-base-simple"
    for name in PREPROCESSOR_NAMES:
        settings = default_preprocessor_settings(name)
        assert parse_preprocessor_settings(name, settings.to_dict()) == settings
    base = parse_preprocessor_settings("canny", {"high_threshold": 0.9})
    assert parse_preprocessor_settings("canny", {"low_threshold": 0.5}, base) == CannySettings(0.5, 0.9, 1.0)
    assert parse_preprocessor_settings("pose", {"line_width": 3.0}).line_width == 3


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("cany", {}, r"unknown preprocessor 'cany' \(did you mean 'canny'\?\); known preprocessors: passthrough, canny"),
        ("zzz", {}, r"unknown preprocessor 'zzz'; known preprocessors"),
        (3, {}, "unknown preprocessor 3"),
        ("canny", {"threshold": 0.2}, r"unknown canny setting 'threshold'; known canny settings: high_threshold, low_threshold, sigma"),
        ("passthrough", {"x": 1}, "known passthrough settings: none"),
        ("canny", {"low_threshold": 3}, "low_threshold must be between 0 and 1, got 3"),
        ("canny", {"low_threshold": "0.1"}, "low_threshold must be a finite number, got '0.1'"),
        ("canny", {"high_threshold": float("nan")}, "high_threshold must be a finite number, got nan"),
        ("canny", {"low_threshold": 0.3, "high_threshold": 0.3}, "low_threshold must be below high_threshold, got low_threshold=0.3 and high_threshold=0.3"),
        ("blur", {"sigma": True}, "sigma must be a finite number, got True"),
        ("tile", {"factor": 0.5}, "factor must be between 1 and 32, got 0.5"),
        ("pose", {"line_width": 2.5}, "line_width must be an integer, got 2.5"),
        ("depth", {"resolution": 10}, "resolution must be between 56 and 1036, got 10"),
        ("depth", {"model": 5}, "model must be a string"),
        ("pose", {"model": "  "}, "model must not be empty"),
        ("canny", [("low_threshold", 0.1)], "canny settings must be a JSON object, got list"),
    ],
)
def test_bad_settings_name_the_field(name, values, message):
    with pytest.raises(ConfigError, match=message):
        parse_preprocessor_settings(name, values)


def test_a_base_of_another_preprocessor_is_refused():
    with pytest.raises(ConfigError, match="base settings for blur must be BlurSettings, got CannySettings"):
        parse_preprocessor_settings("blur", {}, CannySettings())


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)
_keys = st.one_of(st.sampled_from(sorted({k for n in PREPROCESSOR_NAMES for k in default_preprocessor_settings(n).to_dict()})), st.text(max_size=10), st.integers())


@hyp_settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.sampled_from(PREPROCESSOR_NAMES), st.text(max_size=12)), values=st.dictionaries(_keys, _values, max_size=4))
def test_random_settings_only_ever_raise_config_error(name, values):
    try:
        settings = parse_preprocessor_settings(name, values)
    except ConfigError as error:
        assert str(error)
        return
    assert parse_preprocessor_settings(name, settings.to_dict()) == settings
    assert set(values) <= set(settings.to_dict())
