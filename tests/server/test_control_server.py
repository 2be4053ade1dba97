"""ControlNets and the IP-Adapter through the server: chosen at the offer, changed live (HTTP and data channel), refused clearly."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from streamgen.client.synthetic import MarkerVideoTrack
from streamgen.client.webrtc import connect_offer
from streamgen.errors import ConfigError
from streamgen.pipeline import ImagePipeline

from .helpers import bearer, real_offer_sdp, running_server

STEERING = {"controlnets": ("tiny",), "ip_adapter": "tiny", "preprocessor_models": ("depth=tiny",)}


@pytest.fixture(scope="module")
def steered_pipeline():
    """A tiny model of its own: the IP-Adapter changes its UNet."""
    from streamgen.models.image.tiny import build_tiny_image_model

    return ImagePipeline(build_tiny_image_model(seed=0))


def _png(size: int = 32, colour=(30, 160, 90)) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_a_session_steers_with_controlnets_and_a_reference_image(steered_pipeline):
    async with running_server(steered_pipeline, **STEERING) as server:
        settings = {"width": 64, "height": 64, "controlnets": [{"model": "tiny", "preprocessor": "canny", "conditioning_scale": 0.8}]}
        peer = await connect_offer(server.base_url, MarkerVideoTrack(64, 64), settings)
        own = bearer(peer.secret)
        url = f"/api/sessions/{peer.session_id}/params"
        try:
            await peer.wait_for_frames(3)
            ack = await peer.control({"type": "params", "params": {"controlnets": [{"conditioning_scale": 0.3, "preprocessor_settings": {"low_threshold": 0.05}}]}})
            assert ack["ok"], ack
            status, body, _ = await server.request("GET", f"/api/sessions/{peer.session_id}", headers=own)
            entry = body["params"]["controlnets"][0]
            assert entry["conditioning_scale"] == 0.3 and entry["preprocessor_settings"]["low_threshold"] == 0.05 and entry["preprocessor"] == "canny"

            status, body, _ = await server.request("PATCH", url, json={"controlnets": [{}, {"model": "tiny", "preprocessor": "depth", "preprocessor_settings": {"model": "tiny"}}]}, headers=own)
            assert status == 200 and [e["preprocessor"] for e in body["params"]["controlnets"]] == ["canny", "depth"], body

            image = _png()
            status, body, _ = await server.request("PATCH", url, json={"ip_adapter_image": image, "ip_adapter_scale": 0.5}, headers=own)
            assert status == 200 and body["params"]["ip_adapter_image"]["bytes"] == len(base64.b64decode(image)), body
            await peer.wait_for_frames(6)
            assert server.context.manager.get(peer.session_id).stats.frames_output >= 6
        finally:
            await peer.close()


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"controlnets": [{"model": "depth-sd15"}]}, 400, "not loaded on this server"),
        ({"controlnets": [{"model": "tiny", "preprocessor": "cany"}]}, 400, "did you mean 'canny'"),
        ({"controlnets": [{"model": "tiny", "conditioning_scale": -1}]}, 400, "conditioning_scale must be between 0 and 5"),
        ({"controlnets": [{"model": "tiny", "preprocessor": "depth", "preprocessor_settings": {"model": "/etc"}}]}, 400, "not loaded on this server"),
        ({"ip_adapter_image": "bm90IGFuIGltYWdl"}, 400, "not a PNG, JPEG or WebP"),
        ({"ip_adapter_scale": 3}, 400, "ip_adapter_scale must be between 0 and 2"),
    ],
)
async def test_bad_steering_is_refused_and_the_session_keeps_streaming(steered_pipeline, change, status, words):
    async with running_server(steered_pipeline, **STEERING) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(64, 64), {"width": 64, "height": 64})
        try:
            await peer.wait_for_frames(2)
            got, body, _ = await server.request("PATCH", f"/api/sessions/{peer.session_id}/params", json=change, headers=bearer(peer.secret))
            assert got == status and words in body["error"], body
            ack = await peer.control({"type": "params", "params": change})
            assert not ack["ok"] and words in ack["error"], ack
            await peer.wait_for_frames(4)  # the session kept streaming
        finally:
            await peer.close()


async def test_an_offer_naming_an_unloaded_controlnet_is_refused_before_a_session_exists(steered_pipeline):
    async with running_server(steered_pipeline, **STEERING) as server:
        sdp = await real_offer_sdp()
        status, body, _ = await server.request("POST", "/offer", json={"sdp": sdp, "type": "offer", "params": {"controlnets": [{"model": "canny-sd15"}]}})
        assert status == 400 and "not loaded on this server" in body["error"], body
        assert not server.context.manager.sessions


async def test_a_large_reference_image_fits_the_params_limit_but_not_past_it(steered_pipeline):
    async with running_server(steered_pipeline, max_image_bytes=512 * 1024, **STEERING) as server:
        peer = await connect_offer(server.base_url, MarkerVideoTrack(64, 64), {"width": 64, "height": 64})
        try:
            await peer.wait_for_frames(1)
            noisy = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB as PNG: over --max-body-kb
            buffer = io.BytesIO()
            Image.fromarray(noisy).save(buffer, format="PNG")
            image = base64.b64encode(buffer.getvalue()).decode()
            assert len(image) > server.context.config.max_body_bytes
            status, body, _ = await server.request("PATCH", f"/api/sessions/{peer.session_id}/params", json={"ip_adapter_image": image}, headers=bearer(peer.secret))
            assert status == 200, body
            status, body, _ = await server.request("PATCH", f"/api/sessions/{peer.session_id}/params", json={"ip_adapter_image": image * 3}, headers=bearer(peer.secret))
            assert status == 413, body
        finally:
            await peer.close()


def test_steering_options_refuse_a_video_model():
    from streamgen.pipeline.identity import IdentityPipeline
    from streamgen.server.worker.pipelines import attach_server_controls

    with pytest.raises(ConfigError, match="steer image models"):
        attach_server_controls(IdentityPipeline(), ("tiny",), None, ())


async def test_health_lists_steering_and_the_control_image_is_served(steered_pipeline):
    async with running_server(steered_pipeline, **STEERING) as server:
        status, health, _ = await server.request("GET", "/health")
        steering = health["steering"]
        assert steering["controlnets"] == ["tiny"] and steering["ip_adapter"]["source"] == "tiny"
        assert "canny" in steering["preprocessors"] and {"preprocessor": "depth", "model": "tiny"} in steering["estimators"]
        assert steering["loads_on_demand"] is False
        peer = await connect_offer(server.base_url, MarkerVideoTrack(64, 64), {"width": 64, "height": 64, "controlnets": [{"model": "tiny", "preprocessor": "canny"}]})
        try:
            await peer.wait_for_frames(3)
            async with server.http.get(f"{server.base_url}/api/sessions/{peer.session_id}/controlnets/0/image", headers=bearer(peer.secret)) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
                picture = Image.open(io.BytesIO(await response.read()))
                assert picture.size == (64, 64)
            status, body, _ = await server.request("GET", f"/api/sessions/{peer.session_id}/controlnets/3/image", headers=bearer(peer.secret))
            assert status == 400 and "there is no ControlNet 3" in body["error"]
            status, body, _ = await server.request("GET", f"/api/sessions/{peer.session_id}/controlnets/0/image")
            assert status in (401, 403)
        finally:
            await peer.close()
