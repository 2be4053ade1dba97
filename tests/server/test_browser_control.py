"""The page's "Control" panel in a real browser: ControlNets and a style image steer a live session,
every change shows the server's answer next to its control, and what the server holds follows."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from streamgen.pipeline import ImagePipeline

from .helpers import bearer, running_server
from .test_browser import CHROMIUM, CHROMIUM_FLAGS

# small frames keep the CPU model quick; the page sends no size, so the server's defaults decide
STEERING = {"controlnets": ("tiny",), "ip_adapter": "tiny", "preprocessor_models": ("depth=tiny",), "default_params": {"width": 64, "height": 64}}
FIRST = '#cn-list li[data-index="0"]'

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium (scripts/test.sh installs it with apt-get when run as root)"
)


@pytest.fixture(scope="module")
def steered_pipeline():
    """A tiny model of its own: the IP-Adapter changes its UNet."""
    from streamgen.models.image.tiny import build_tiny_image_model

    return ImagePipeline(build_tiny_image_model(seed=0))


def _write_png(path, colour=(200, 40, 90)):
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


class ControlPage:
    """The page under test and the session it runs, seen from both sides."""

    def __init__(self, page, server):
        self.page = page
        self.server = server
        self.session_id = None
        self.secret = None

    async def open(self):
        await self.page.goto(self.server.base_url + "/")
        await self.page.wait_for_selector("#control-panel:not([hidden])", timeout=30_000)
        await self.page.click("#control-panel > summary")

    async def start(self):
        await self.page.click("#start")
        await self.page.wait_for_function("window.streamgen.outputFrames > 3", timeout=60_000)
        self.session_id = await self.page.evaluate("window.streamgen.sessionId")
        self.secret = self.server.context.manager.get(self.session_id).secret

    async def params(self) -> dict[str, Any]:
        status, body, _ = await self.server.request("GET", f"/api/sessions/{self.session_id}", headers=bearer(self.secret))
        assert status == 200, body
        return body["params"]

    async def until(self, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0) -> dict[str, Any]:
        """The session's params once ``condition`` holds for them."""
        deadline = time.monotonic() + timeout
        while not condition(params := await self.params()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the session holds {params}")
            await asyncio.sleep(0.05)
        return params

    async def answered(self, action, counter: str = "controlAcks"):
        """Do ``action`` and wait until the page counted one more answer of that kind."""
        before = await self.page.evaluate(f"window.streamgen.{counter}")
        await action()
        await self.page.wait_for_function(f"window.streamgen.{counter} > {before}", timeout=30_000)


async def _browser(playwright, tmp_path):
    # launch_persistent_context gives Chromium a fresh --user-data-dir of its own
    return await playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
    )


async def test_the_control_panel_steers_a_live_session(steered_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(steered_pipeline, **STEERING) as server, playwright_api.async_playwright() as playwright:
        browser = await _browser(playwright, tmp_path)
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            refused: list[tuple[int, str]] = []
            page.on("response", lambda response: refused.append((response.status, response.url)) if response.status >= 400 else None)
            ui = ControlPage(page, server)
            await ui.open()
            # the add row offers the loaded ControlNet; a model-based preprocessor without an estimator cannot be picked
            assert await page.eval_on_selector_all("#cn-add-model option", "os => os.map((o) => o.value)") == ["tiny"]
            assert await page.eval_on_selector("#cn-add-preprocessor option[value=pose]", "o => o.disabled")
            assert not await page.eval_on_selector("#cn-add-preprocessor option[value=depth]", "o => o.disabled")
            await ui.start()

            # add a ControlNet live
            await page.select_option("#cn-add-model", "tiny")
            await page.select_option("#cn-add-preprocessor", "canny")
            await ui.answered(lambda: page.click("#cn-add"))
            assert await page.get_attribute("#cn-add-feedback", "data-answer") == "ok"
            assert "applied" in await page.text_content("#cn-add-feedback")
            params = await ui.until(lambda p: len(p["controlnets"]) == 1, "the ControlNet to be attached")
            assert params["controlnets"][0]["model"] == "tiny" and params["controlnets"][0]["preprocessor"] == "canny"
            assert await page.text_content(f"{FIRST} .cn-name") == "1. tiny"

            # its scale slider sends on input
            await ui.answered(lambda: page.fill(f"{FIRST} .cn-scale", "0.3"))
            assert await page.get_attribute(f"{FIRST} .feedback", "data-answer") == "ok"
            assert await page.text_content(f"{FIRST} .cn-scale-value") == "0.30"
            await ui.until(lambda p: p["controlnets"][0]["conditioning_scale"] == 0.3, "the scale to reach the session")

            # the inset shows the control image the ControlNet read
            await page.wait_for_function(f"document.querySelector('{FIRST} .cn-inset').naturalWidth > 0", timeout=30_000)
            assert (await page.get_attribute(f"{FIRST} .cn-inset", "src")).startswith("blob:")

            # another preprocessor: depth names the loaded estimator
            await ui.answered(lambda: page.select_option(f"{FIRST} .cn-preprocessor", "depth"))
            params = await ui.until(lambda p: p["controlnets"][0]["preprocessor"] == "depth", "depth to reach the session")
            assert params["controlnets"][0]["preprocessor_settings"]["model"] == "tiny"
            assert params["controlnets"][0]["conditioning_scale"] == 0.3, "the other fields stay"

            # a style image through the file input, and its scale
            style = _write_png(tmp_path / "style.png")
            await ui.answered(lambda: page.set_input_files("#ip-image", str(style)))
            assert await page.get_attribute("#ip-image-feedback", "data-answer") == "ok"
            params = await ui.until(lambda p: p["ip_adapter_image"] is not None, "the style image to reach the session")
            assert params["ip_adapter_image"]["bytes"] == style.stat().st_size
            await ui.answered(lambda: page.fill("#ip-scale", "0.5"))
            await ui.until(lambda p: p["ip_adapter_scale"] == 0.5, "the style scale to reach the session")

            # remove: disabled on the server (positions stay), hidden on the page
            await ui.answered(lambda: page.click(f"{FIRST} .cn-remove"))
            await page.wait_for_selector(FIRST, state="hidden")
            params = await ui.until(lambda p: p["controlnets"][0]["enabled"] is False, "remove to disable the ControlNet")
            assert len(params["controlnets"]) == 1

            assert server.context.manager.get(ui.session_id).stats.frames_output > 3
            assert await page.is_hidden("#error"), await page.text_content("#error")
            assert await page.evaluate("window.streamgen.controlErrors") == 0
            # a control image asked for between a ControlNet's ack and the step that attaches it is a 204, not a refusal
            assert not refused, refused
            assert not [line for line in console if line.startswith("error")], console

            await page.click("#stop")
            # after Stop the removed entry is gone: nothing is left for the next Start
            assert await page.eval_on_selector_all("#cn-list li", "items => items.length") == 0
        finally:
            await browser.close()


async def test_choices_before_start_go_with_the_offer_and_a_refusal_is_shown(steered_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(steered_pipeline, **STEERING) as server, playwright_api.async_playwright() as playwright:
        browser = await _browser(playwright, tmp_path)
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            ui = ControlPage(page, server)
            await ui.open()
            # before a session: the choices wait for Start
            await page.select_option("#cn-add-preprocessor", "canny")
            await page.click("#cn-add")
            await page.fill(f"{FIRST} .cn-scale", "0.45")
            style = _write_png(tmp_path / "style.png")
            await page.set_input_files("#ip-image", str(style))
            await page.wait_for_selector("#ip-image-feedback[data-answer=later]")  # the file is read
            assert "applies at Start" in await page.text_content("#ip-image-feedback")
            assert "applies at Start" in await page.text_content("#cn-add-feedback")

            await ui.start()
            params = await ui.until(lambda p: p["ip_adapter_image"] is not None, "the style image to follow the offer")
            assert [(e["model"], e["preprocessor"], e["conditioning_scale"]) for e in params["controlnets"]] == [("tiny", "canny", 0.45)]

            # a file that is not an image: the server's refusal is shown next to the file input
            not_an_image = tmp_path / "notes.png"
            not_an_image.write_bytes(b"this is not a picture")
            await ui.answered(lambda: page.set_input_files("#ip-image", str(not_an_image)), counter="controlErrors")
            text = await page.text_content("#ip-image-feedback")
            assert "not a PNG, JPEG or WebP" in text and await page.is_visible("#ip-image-feedback"), text
            assert await page.get_attribute("#ip-image-feedback", "data-answer") == "error"
            assert (await ui.params())["ip_adapter_image"]["bytes"] == style.stat().st_size, "the earlier image stays"

            # the session kept streaming
            presented = await page.evaluate("window.streamgen.outputFrames")
            await page.wait_for_function(f"window.streamgen.outputFrames > {presented + 2}", timeout=30_000)
            await page.click("#stop")
        finally:
            await browser.close()


async def test_the_panel_is_hidden_when_the_server_loaded_nothing_to_steer_with(shared_tiny_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(shared_tiny_pipeline) as server, playwright_api.async_playwright() as playwright:
        browser = await _browser(playwright, tmp_path)
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            await page.wait_for_function("document.getElementById('model').textContent.includes('tiny')", timeout=30_000)
            status, health, _ = await server.request("GET", "/health")
            assert health["steering"]["controlnets"] == [] and health["steering"]["ip_adapter"] is None, "nothing loaded to steer with"
            assert await page.is_hidden("#control-panel")
        finally:
            await browser.close()
