"""A real browser: headless Debian Chromium (driven by Playwright's Python package) streams its
fake camera through the page and the output <video> keeps presenting new frames."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .helpers import poll, running_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

# resolves once the page's output <video> has presented `count` new frames
COUNT_PRESENTED_FRAMES = """(count) => new Promise((resolve) => {
  const video = document.getElementById("output");
  let seen = 0;
  const onFrame = () => (++seen >= count ? resolve(seen) : video.requestVideoFrameCallback(onFrame));
  video.requestVideoFrameCallback(onFrame);
})"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium (scripts/test.sh installs it with apt-get when run as root)"
)


async def test_browser_session_streams_and_takes_live_parameters(shared_tiny_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(shared_tiny_pipeline) as server, playwright_api.async_playwright() as playwright:
        # launch_persistent_context gives Chromium a fresh --user-data-dir of its own
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            await page.goto(server.base_url + "/")
            await page.wait_for_function("document.getElementById('model').textContent.includes('tiny')", timeout=20_000)
            # an image model: its controls are shown, the video-only noise control is not
            assert await page.is_visible("[data-param=strength]") and await page.is_hidden("[data-param=noise_scale]")
            assert await page.is_hidden("#stats"), "nothing to show before Start"
            assert await page.is_visible("#model-note") and "noise by design" in await page.text_content("#model-note")
            await page.click("#start")

            await page.wait_for_function("window.streamgen.outputFrames > 3", timeout=60_000)
            presented = await page.evaluate("window.streamgen.outputFrames")
            await page.wait_for_function(f"window.streamgen.outputFrames > {presented + 5}", timeout=60_000)

            session_id = await page.evaluate("window.streamgen.sessionId")
            session = server.context.manager.get(session_id)
            assert session.stats.frames_output > 5

            # the page's watch link carries the session's secret after "#" (never sent), and does not show it
            watch_url = await page.get_attribute("#watch-url", "href")
            assert watch_url == f"{server.base_url}/watch?session={session_id}#secret={session.secret}"
            assert session.secret not in await page.text_content("#watch-link")

            # the WHEP player page (an OBS browser source) shows the same session's output
            watcher = await browser.new_page()
            sent_urls: list[str] = []
            watcher.on("request", lambda request: sent_urls.append(request.url))
            await watcher.goto(watch_url)
            presented_by_watcher = await asyncio.wait_for(watcher.evaluate(COUNT_PRESENTED_FRAMES, 5), 60)
            assert presented_by_watcher == 5 and len(session.viewers) == 1
            assert watcher.url == f"{server.base_url}/watch?session={session_id}", "the page drops the secret from the address bar"
            await watcher.reload()  # the secret is kept for the tab (sessionStorage), not in the URL
            assert await asyncio.wait_for(watcher.evaluate(COUNT_PRESENTED_FRAMES, 2), 60) == 2
            await poll(lambda: len(session.viewers) == 1, 20, "the reloaded page to replace its viewer")
            assert sent_urls and not [url for url in sent_urls if session.secret in url or "#" in url]
            await watcher.close(run_before_unload=True)  # as a browser tab does when closed
            await poll(lambda: not session.viewers, 20, "the watch page's viewer to leave")

            # a credential in the query string (sent to the server with the page) is refused, not used
            old_style = await browser.new_page()
            await old_style.goto(f"{server.base_url}/watch?session={session_id}&secret={session.secret}")
            await old_style.wait_for_selector("#error:not([hidden])")
            assert 'after "#"' in await old_style.text_content("#error") and not session.viewers
            await old_style.close()

            await page.fill("#seed", "777")
            await page.dispatch_event("#seed", "change")
            await poll(lambda: session.params["seed"] == [[777, 1.0]], 20, "the seed set in the page to reach the session")

            # a prompt change the server acknowledged shows a brief "applied"
            applied = await page.evaluate("window.streamgen.paramsApplied")
            await page.fill("#prompt", "an ink drawing")
            await page.wait_for_function(f"window.streamgen.paramsApplied > {applied}", timeout=20_000)
            assert await page.is_visible("#applied") and "applied" in await page.text_content("#applied")
            assert "an ink drawing" in str(session.params["prompt"])
            assert (await page.text_content("#stat-fps-in")) != "–", "the overlay shows the server's stats while running"

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser-session.png"))
            assert await page.is_hidden("#error"), await page.text_content("#error")

            async with page.expect_request(lambda r: r.method == "DELETE" and f"/api/sessions/{session_id}" in r.url) as deleting:
                await page.click("#stop")
            delete = await deleting.value
            assert delete.headers.get("authorization") == f"Bearer {session.secret}", "Stop ends the session with its secret"
            assert (await delete.response()).status in (200, 404), "accepted (404: the closed peer ended it first)"
            await poll(lambda: not server.context.manager.sessions, 20, "Stop to end the session on the server")
            overlay = await page.eval_on_selector_all("#stats b", "nodes => nodes.map((n) => n.textContent)")
            assert overlay == [""] * 6 and await page.is_hidden("#stats"), f"Stop clears and hides the stats overlay: {overlay}"
            assert not [line for line in console if line.startswith("error")], console
        finally:
            await browser.close()



async def test_the_page_explains_a_missing_token_and_a_server_that_went_away(identity_pipeline, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            async with running_server(identity_pipeline, token="s3cret") as server:
                await page.goto(server.base_url + "/")
                await page.wait_for_function("document.getElementById('model').textContent.includes('identity')", timeout=20_000)
                assert await page.is_hidden("#model-note")  # only the tiny models are noise by design
                await page.click("#start")
                await page.wait_for_selector("#error:not([hidden])", timeout=20_000)
                text = await page.text_content("#error")
                assert '"Server token"' in text and "Authorization" not in text, text
                assert await page.evaluate("document.getElementById('token-summary').parentElement.open")
            # the server is gone; the page is still open
            await page.fill("#token", "s3cret")
            await page.click("#start")
            await page.wait_for_function("document.getElementById('error').textContent.includes('cannot be reached')", timeout=20_000)
            assert "Failed to fetch" not in await page.text_content("#error")
        finally:
            await browser.close()


async def test_the_page_generates_a_video_with_no_input_source(tiny_video_pipeline, tmp_path):
    """A video model offers "No input": the page sends nothing up, asks for txt2vid, and presents the generated frames."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright Python package is not installed")
    async with running_server(tiny_video_pipeline) as server, playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            await page.wait_for_selector("#source option[value=none]", state="attached", timeout=20_000)
            assert await page.is_visible("[data-param=noise_scale]"), "a video model's noise on its input is shown for a camera"
            await page.select_option("#source", "none")
            assert await page.is_hidden("[data-param=noise_scale]"), "with no input there is no noise on it to set"
            await page.click("#start")
            await page.wait_for_function("window.streamgen.outputFrames > 3", timeout=60_000)
            session = server.context.manager.get(await page.evaluate("window.streamgen.sessionId"))
            assert session.state.generates, "the offer asked for txt2vid"
            assert session.stats.frames_received == 0 and session.clock is not None, "nothing went up: the clock paced it"
            assert await page.evaluate("document.getElementById('input').srcObject") is None
        finally:
            await browser.close()
