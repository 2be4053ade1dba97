"""ControlNets in the image pipeline: diffusers' ControlNet img2img as the reference, stream batch, batched sessions, live changes."""

from __future__ import annotations

import pytest
import torch

from streamgen.config import StreamConfig
from streamgen.errors import ConfigError
from streamgen.models.image.controlnet import tiny_controlnet
from streamgen.pipeline import ImagePipeline
from tests.pipeline.control_reference import controlnet_img2img_reference, diffusers_noise, grid_indices
from tests.pipeline.helpers import random_frames, record_decoded_latents

SIZE = 64
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def model():
    """A tiny model of its own (ControlNets attach to a model; the shared fixture stays bare), with two ControlNets."""
    from streamgen.models.image.tiny import build_tiny_image_model

    model = build_tiny_image_model(seed=0)
    model.attach_controlnet("tiny", lambda name, m: tiny_controlnet(m.unet, seed=0))
    model.attach_controlnet("tiny-b", lambda name, m: tiny_controlnet(m.unet, seed=1))
    return model


@pytest.fixture()
def pipeline(model):
    pipeline = ImagePipeline(model)
    pipeline.load_on_demand = False
    return pipeline


def _state(pipeline, indices, batch=True, **params):
    config = StreamConfig(width=SIZE, height=SIZE, use_denoising_batch=batch)
    return pipeline.create_state(config, {"t_index_list": list(indices), "prompt": PROMPT, "cfg_type": "none", **params})


def _unit_image(frame):
    """What the passthrough preprocessor makes of a frame: the frame in [0, 1]."""
    return frame[0].permute(2, 0, 1).float() / 255.0


def _step_latents(pipeline, state, frames):
    with record_decoded_latents(pipeline.model) as decoded:
        for frame in frames:
            pipeline.step([state], [frame])
    return decoded


@pytest.mark.parametrize(
    "entries",
    [
        [{"model": "tiny", "conditioning_scale": 0.7}],
        [{"model": "tiny", "conditioning_scale": 1.3, "end": 0.5}],
        [{"model": "tiny", "conditioning_scale": 0.6}, {"model": "tiny-b", "conditioning_scale": 0.9, "start": 0.5, "preprocessor": "blur"}],
    ],
    ids=["one", "one-until-half", "two-with-start"],
)
def test_one_step_equals_diffusers_controlnet_img2img(pipeline, model, entries):
    """Same components, latents and timesteps: streamgen's sequential stream equals diffusers' ControlNet img2img pipeline."""
    indices = grid_indices(model, 2)
    frame = random_frames(1, SIZE, seed=3)[0]
    state = _state(pipeline, indices, batch=False, controlnets=entries)
    state.init_noise = diffusers_noise(7, 2, state.latent_shape)
    decoded = _step_latents(pipeline, state, [frame])

    unit = _unit_image(frame)
    images = []
    for entry in state.params.controlnets:
        preprocessor = pipeline.preprocessors.get(entry.preprocessor, entry.preprocessor_settings)
        images.append(preprocessor(unit[None], entry.preprocessor_settings)[0])
    expected = controlnet_img2img_reference(
        model,
        [model.controlnets[e.model] for e in state.params.controlnets],
        frame[0],
        images,
        prompt=PROMPT,
        steps=2,
        seed=7,
        scales=[e.conditioning_scale for e in state.params.controlnets],
        starts=[e.start for e in state.params.controlnets],
        ends=[e.end for e in state.params.controlnets],
    )
    assert torch.allclose(decoded[0], expected, atol=1e-4), float((decoded[0] - expected).abs().max())


def test_full_cfg_equals_diffusers_with_guidance(pipeline, model):
    """Full CFG doubles the rows, and the ControlNet steers the unconditional ones too (diffusers without guess mode)."""
    indices = grid_indices(model, 2)
    frame = random_frames(1, SIZE, seed=4)[0]
    state = _state(pipeline, indices, batch=False, cfg_type="full", guidance_scale=2.5, negative_prompt="blurry", controlnets=[{"model": "tiny", "conditioning_scale": 0.8}])
    state.init_noise = diffusers_noise(11, 2, state.latent_shape)
    decoded = _step_latents(pipeline, state, [frame])
    expected = controlnet_img2img_reference(
        model, [model.controlnets["tiny"]], frame[0], [_unit_image(frame)], prompt=PROMPT, steps=2, seed=11,
        scales=[0.8], starts=[0.0], ends=[1.0], guidance=2.5, negative_prompt="blurry",
    )
    assert torch.allclose(decoded[0], expected, atol=1e-4), float((decoded[0] - expected).abs().max())


def test_control_changes_the_output(pipeline):
    frames = random_frames(2, SIZE, seed=5)
    plain = _step_latents(pipeline, _state(pipeline, (10, 30)), frames)
    steered = _step_latents(pipeline, _state(pipeline, (10, 30), controlnets=[{"model": "tiny"}]), frames)
    assert not torch.allclose(plain[-1], steered[-1], atol=1e-3)
    off = _step_latents(pipeline, _state(pipeline, (10, 30), controlnets=[{"model": "tiny", "enabled": False}]), frames)
    assert torch.equal(plain[-1], off[-1])


@pytest.mark.parametrize("cfg", ["none", "self", "initialize", "full"])
def test_stream_batch_rows_read_their_own_frames_control(pipeline, cfg):
    """A stream-batch stream equals a sequential one fed the same frames (n − 1 calls later), control included.

    The control image is the frame itself (passthrough) or its edges, so it
    differs for every frame: a buffered row steered by the newest frame's
    image instead of its own would differ.
    """
    indices = (5, 20, 35)
    frames = random_frames(6, SIZE, seed=6)
    entries = [{"model": "tiny", "conditioning_scale": 0.9}, {"model": "tiny-b", "conditioning_scale": 0.5, "start": 0.3, "preprocessor": "canny"}]
    params = {"guidance_scale": 1.8, "delta": 0.7, "cfg_type": cfg, "negative_prompt": "dull", "controlnets": entries}
    batched = _state(pipeline, indices, **params)
    sequential = _state(pipeline, indices, batch=False, **params)
    out_batched = _step_latents(pipeline, batched, frames)
    out_sequential = _step_latents(pipeline, sequential, frames)
    for k, latent in enumerate(out_batched):
        torch.testing.assert_close(latent, out_sequential[max(0, k - 2)], atol=1e-4, rtol=1e-4)


def test_batched_sessions_equal_each_alone(pipeline):
    """Sessions with different ControlNets, scales and none at all share UNet steps and get what each gets alone."""
    indices = (10, 30)
    frames = [random_frames(4, SIZE, seed=s) for s in (1, 2, 3)]
    settings = [
        {"controlnets": [{"model": "tiny", "conditioning_scale": 1.1}]},
        {"controlnets": [{"model": "tiny-b", "conditioning_scale": 0.4, "preprocessor": "canny"}, {"model": "tiny", "conditioning_scale": 0.2}]},
        {},
    ]
    together = [_state(pipeline, indices, seed=10 + i, **s) for i, s in enumerate(settings)]
    outputs_together = [[] for _ in together]
    for call in range(4):
        outs = pipeline.step(together, [f[call] for f in frames])
        for i, out in enumerate(outs):
            outputs_together[i].append(out.frames)
    for i, s in enumerate(settings):
        alone = _state(pipeline, indices, seed=10 + i, **s)
        for call in range(4):
            out = pipeline.step([alone], [frames[i][call]])[0]
            assert torch.allclose(out.frames.float(), outputs_together[i][call].float(), atol=1.0), (i, call)


def test_live_scale_change_keeps_the_buffer_and_takes_effect(pipeline):
    indices = (10, 30)
    frames = random_frames(4, SIZE, seed=9)
    state = _state(pipeline, indices, controlnets=[{"model": "tiny", "conditioning_scale": 1.0}])
    twin = _state(pipeline, indices, controlnets=[{"model": "tiny", "conditioning_scale": 1.0}])
    for frame in frames[:2]:
        pipeline.step([state], [frame])
        pipeline.step([twin], [frame])
    pipeline.update(state, controlnets=[{"conditioning_scale": 0.1}])
    assert state.params.controlnets[0].conditioning_scale == 1.0  # queued, applied at the next step
    a = pipeline.step([state], [frames[2]])[0]
    b = pipeline.step([twin], [frames[2]])[0]
    assert state.buffer is not None and state.params.controlnets[0].conditioning_scale == 0.1
    assert not torch.equal(a.frames, b.frames)
    pipeline.update(state, controlnets=[{"enabled": False}])
    pipeline.step([state], [frames[3]])
    assert state.params.controlnets[0].enabled is False and state.params.controlnets[0].model == "tiny"


def test_a_controlnet_enabled_live_steers_buffered_rows_with_the_newest_image(pipeline):
    state = _state(pipeline, (10, 30))
    frames = random_frames(3, SIZE, seed=12)
    pipeline.step([state], [frames[0]])
    pipeline.update(state, controlnets=[{"model": "tiny-b", "preprocessor": "canny"}])
    pipeline.step([state], [frames[1]])
    assert len(state.buffer_controls) == 1 and state.params.controlnets[0].control_key in state.buffer_controls[0]


def test_checkpoint_restore_puts_the_control_images_back(pipeline):
    state = _state(pipeline, (10, 30), controlnets=[{"model": "tiny"}])
    frames = random_frames(3, SIZE, seed=13)
    pipeline.step([state], [frames[0]])
    saved = pipeline.checkpoint(state)
    before = list(state.buffer_controls)
    pipeline.step([state], [frames[1]])
    assert state.buffer_controls[0] is not before[0]
    pipeline.restore(state, saved)
    assert [c is d for c, d in zip(state.buffer_controls, before)] == [True]


def test_bad_control_settings_are_refused_before_anything_changes(pipeline):
    state = _state(pipeline, (10, 30), controlnets=[{"model": "tiny"}])
    with pytest.raises(ConfigError, match="unknown preprocessor|canny"):
        pipeline.update(state, controlnets=[{"preprocessor": "cany"}])
    with pytest.raises(ConfigError, match="conditioning_scale must be between 0 and 5"):
        pipeline.update(state, controlnets=[{"conditioning_scale": 9}])
    with pytest.raises(ConfigError, match="model cannot change on a running stream"):
        pipeline.update(state, controlnets=[{"model": "tiny-b"}])
    with pytest.raises(ConfigError, match="not loaded on this server"):
        pipeline.update(state, controlnets=[{}, {"model": "depth-sd15"}])
    with pytest.raises(ConfigError, match="start must be below its end"):
        pipeline.update(state, controlnets=[{"start": 0.8, "end": 0.2}])
    with pytest.raises(ConfigError, match="must name its model"):
        pipeline.update(state, controlnets=[{}, {"preprocessor": "canny"}])
    with pytest.raises(ConfigError, match="ip_adapter_image needs an IP-Adapter"):
        pipeline.update(state, ip_adapter_image={"sha256": "x"} and None or _png())
    assert state.pending.peek() is None and state.params.controlnets[0].conditioning_scale == 1.0


def test_a_controlnet_for_another_architecture_is_refused(model):
    from diffusers import UNet2DConditionModel

    from streamgen.models.image.controlnet import check_controlnet_fits

    other = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
    )
    with pytest.raises(ConfigError, match="cross_attention_dim 64 \\(ControlNet\\) vs 32"):
        check_controlnet_fits(tiny_controlnet(other), model, "sdxl-like")


def test_the_cost_of_control_reaches_the_scheduler(pipeline):
    state = _state(pipeline, (10, 30))
    plain = pipeline.stream_shape(state)
    two = pipeline.shape_with(state, pipeline.parse_update(state, {"controlnets": [{"model": "tiny"}, {"model": "tiny-b"}]}))
    assert plain.controlnets == 0 and two.controlnets == 2
    assert plain.bucket != two.bucket


def _png() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_frame_prepared_on_the_input_side_is_preprocessed_once(pipeline):
    """The server's input thread makes the control images (prepare_input); the step does not make them again."""
    from streamgen.pipeline.image_control import PreparedFrames

    state = _state(pipeline, (10, 30), controlnets=[{"model": "tiny", "preprocessor": "canny"}, {"model": "tiny-b", "preprocessor": "canny"}])
    canny = pipeline.preprocessors.get("canny")
    calls = []
    original = type(canny).__call__
    type(canny).__call__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        frames = random_frames(3, SIZE, seed=14)
        for frame in frames:
            prepared = pipeline.prepare_input(state, frame)
            assert isinstance(prepared, PreparedFrames) and len(prepared.controls) == 1  # two ControlNets, one canny image
            pipeline.step([state], [prepared])
        assert len(calls) == 3
        direct = _state(pipeline, (10, 30), controlnets=[{"model": "tiny", "preprocessor": "canny"}, {"model": "tiny-b", "preprocessor": "canny"}])
        for frame in frames:
            pipeline.step([direct], [frame])
        assert len(calls) == 6
    finally:
        type(canny).__call__ = original
    assert torch.equal(state.last_output, direct.last_output)


def test_feedback_reads_the_previous_output_and_works_for_txt2img(pipeline):
    config = StreamConfig(width=SIZE, height=SIZE, mode="txt2img")
    state = pipeline.create_state(config, {"prompt": PROMPT, "t_index_list": [10, 30], "controlnets": [{"model": "tiny", "preprocessor": "feedback"}]})
    first = pipeline.step([state], [None])[0].frames
    assert state.last_controls == {}  # nothing to feed back before the first output
    pipeline.step([state], [None])
    (image,) = state.last_controls.values()
    assert torch.allclose(image[0], first[0].permute(2, 0, 1).float() / 255.0)


def test_similarity_filter_and_prompt_transitions_behave_as_before_with_control(pipeline):
    """The same frames and parameters skip the same frames and morph over the same steps, control on or off."""
    frames = random_frames(1, SIZE, seed=15) * 6 + random_frames(1, SIZE, seed=17) * 3
    params = {"similarity_filter": True, "similarity_threshold": 0.5, "max_skip_frames": 3}
    runs = {}
    for name, extra in (("plain", {}), ("steered", {"controlnets": [{"model": "tiny"}]})):
        state = _state(pipeline, (10, 30), **params, **extra)
        skipped = [pipeline.step([state], [f])[0].skipped for f in frames]
        pipeline.update(state, prompt="a forest", transition_frames=3)
        morphing = []
        for f in random_frames(4, SIZE, seed=16):
            pipeline.step([state], [f])
            morphing.append(state.prompt.in_progress)
        runs[name] = (skipped, state.counters.frames_skipped, morphing)
    assert any(runs["plain"][0]) and runs["steered"] == runs["plain"]
