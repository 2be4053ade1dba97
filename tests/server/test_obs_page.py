"""The /obs browser source in headless Chromium follows a WHIP stream key across OBS restarts.

An OBS-like publisher (H.264 only, no candidates, bearer token, no trickle)
streams a red camera; the page, opened at the URL of the WHIP answer's
``Link`` header (it never learns a session id), shows red. OBS stops and
starts again with a blue camera: the same page shows blue by itself. OBS
then vanishes without a Stop and restarts green: the page follows the new
session while the silent old one is still open.
"""

from __future__ import annotations

import asyncio

import pytest

from .helpers import ADMIN_TOKEN, poll, running_server
from .obs_like import ColourTrack, obs_publish
from .test_browser import CHROMIUM, CHROMIUM_FLAGS

RED, BLUE, GREEN = (220, 40, 40), (40, 40, 220), (40, 200, 40)

# the colour at the centre of the page's <video>, as the page presents it
CENTRE_COLOUR = """() => {
  const video = document.getElementById("output");
  if (!video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0);
  return Array.from(context.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data.slice(0, 3));
}"""

LAYOUT = """() => ({
  background: getComputedStyle(document.documentElement).backgroundColor,
  bodyBackground: getComputedStyle(document.body).backgroundColor,
  scrolls: document.documentElement.scrollHeight > innerHeight || document.documentElement.scrollWidth > innerWidth,
  fit: getComputedStyle(document.getElementById("output")).objectFit,
  controls: document.getElementById("output").controls,
  muted: document.getElementById("output").muted,
})"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")


def close_to(colour: list[int] | None, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return colour is not None and all(abs(a - b) <= tolerance for a, b in zip(colour, expected))


async def shows(page, expected: tuple[int, int, int], what: str) -> None:
    """Wait until the page presents new frames of ``expected``'s colour."""
    presented = await page.evaluate("window.streamgenObs.presented")
    await page.wait_for_function(f"window.streamgenObs.presented > {presented + 5}", timeout=60_000)
    deadline = asyncio.get_running_loop().time() + 30
    while not close_to(colour := await page.evaluate(CENTRE_COLOUR), expected):
        assert asyncio.get_running_loop().time() < deadline, f"the page shows {colour}, not {what} {expected}"
        await asyncio.sleep(0.2)


async def test_obs_page_follows_the_stream_key_across_obs_restarts(identity_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    publishers = []
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server, playwright_api.async_playwright() as playwright:
        manager = server.context.manager
        whip_url = server.base_url + "/whip/streams/studio"
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            first = await obs_publish(whip_url, ColourTrack(RED), ADMIN_TOKEN)
            publishers.append(first)
            url = first.browser_source
            assert url == f"{server.base_url}/obs#stream=studio&secret={first.stream_secret}"
            assert 'rel="related"' in first.link

            page = browser.pages[0] if browser.pages else await browser.new_page()
            console: list[str] = []
            sent_urls: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("request", lambda request: sent_urls.append(request.url))
            refused: list[str] = []
            page.on("response", lambda response: response.ok or refused.append(f"{response.request.method} {response.url} {response.status}"))
            page_url = url.replace("/obs#", "/obs?bg=transparent#")
            await page.goto(page_url)
            await shows(page, RED, "the first stream's red")
            assert await page.evaluate("window.streamgenObs.sessionId") == first.session_id
            assert len(manager.get(first.session_id).viewers) == 1
            assert page.url == f"{server.base_url}/obs?bg=transparent", "the page drops its secret from the address bar"
            layout = await page.evaluate(LAYOUT)
            assert layout == {
                "background": "rgba(0, 0, 0, 0)", "bodyBackground": "rgba(0, 0, 0, 0)", "scrolls": False,
                "fit": "contain", "controls": False, "muted": True,
            }

            # OBS: Stop Streaming (DELETE with its bearer token), then Start Streaming with another scene
            assert await first.stop() == 200
            await page.wait_for_function("window.streamgenObs.sessionId === null", timeout=20_000)
            second = await obs_publish(whip_url, ColourTrack(BLUE), ADMIN_TOKEN)
            publishers.append(second)
            assert second.browser_source == url, "the browser-source URL outlives the session"
            await page.wait_for_function(f"window.streamgenObs.sessionId === {second.session_id!r}", timeout=20_000)
            await shows(page, BLUE, "the new stream's blue")
            await poll(lambda: len(manager.get(second.session_id).viewers) == 1, 20, "the page to watch the new session")

            # OBS vanishes without a Stop and starts again: the newest session is followed, the page leaves the old one
            await second.close()
            third = await obs_publish(whip_url, ColourTrack(GREEN), ADMIN_TOKEN)
            publishers.append(third)
            await page.wait_for_function(f"window.streamgenObs.sessionId === {third.session_id!r}", timeout=20_000)
            await shows(page, GREEN, "the restarted stream's green")
            await poll(lambda: second.session_id not in manager.sessions or not manager.sessions[second.session_id].viewers, 20, "the old viewer to go")

            assert await page.evaluate("window.streamgenObs.connects") == 3
            assert await page.is_hidden("#error"), await page.text_content("#error")
            assert sent_urls and not [u for u in sent_urls if first.stream_secret in u or "#" in u], "the secret never goes to the server"
            # a viewer's DELETE may race its session's end (401); every other request succeeds, and nothing else is logged
            assert [r for r in refused if not r.startswith("DELETE ")] == [], refused
            assert not [line for line in console if line.startswith("error") and "Failed to load resource" not in line], console
            await page.close(run_before_unload=True)
            await poll(lambda: not manager.get(third.session_id).viewers, 20, "the closed page's viewer to leave")
        finally:
            await browser.close()
            for publisher in publishers:
                await publisher.close()


async def test_obs_page_without_a_valid_secret_says_so(identity_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(identity_pipeline, token=ADMIN_TOKEN) as server, playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(f"{server.base_url}/obs#stream=studio&secret=not-the-secret")
            await page.wait_for_selector("#error:not([hidden])")
            assert "follow secret" in await page.text_content("#error")
            assert await page.evaluate("window.streamgenObs.sessionId") is None

            await page.goto(f"{server.base_url}/obs?stream=studio&secret=in-the-query")
            await page.wait_for_selector("#error:not([hidden])")
            assert 'after "#"' in await page.text_content("#error")
        finally:
            await browser.close()
