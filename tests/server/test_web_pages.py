"""The browser pages' own logic, run in node (no browser): credentials travel after "#" only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_watch_links_carry_credentials_in_the_fragment_only():
    """web/signaling.js: the watch URL puts the secret after "#", and the fragment is read back."""
    script = """
    import { fragmentCredentials, watchUrl } from "./signaling.js";
    const url = watchUrl("http://h:1", "a b", "s/+=");
    console.log(JSON.stringify({
      url, bare: watchUrl("http://h:1", "id"),
      back: fragmentCredentials(new URL(url).hash),
      token: fragmentCredentials("#token=t0k"), none: fragmentCredentials(""),
    }));
    """
    web = Path(__file__).resolve().parents[2] / "web"
    out = subprocess.run([NODE, "--input-type=module", "-e", script], cwd=web, capture_output=True, text=True, timeout=60, check=True).stdout
    got = json.loads(out)
    assert got["url"] == "http://h:1/watch?session=a%20b#secret=s%2F%2B%3D" and got["bare"] == "http://h:1/watch?session=id"
    assert got["back"] == {"secret": "s/+=", "token": ""} and got["token"] == {"secret": "", "token": "t0k"}
    assert got["none"] == {"secret": "", "token": ""}


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_overlay_fps_out_is_not_zero_while_frames_trickle_in():
    """web/overlay.js: the server's 2-s window reads 0 below one frame per 2 s; the page's own count does not."""
    script = """
    import { FrameRate, fpsOutText } from "./overlay.js";
    const rate = new FrameRate(10000);
    const empty = rate.perSecond();
    // one presented frame every 3 s, sampled once a second (as each stats message arrives)
    for (let t = 0; t <= 12000; t += 1000) rate.sample(t, Math.floor(t / 3000));
    const trickle = rate.perSecond();
    const stalled = new FrameRate(10000);
    for (let t = 0; t <= 12000; t += 1000) stalled.sample(t, 5);
    console.log(JSON.stringify({
      empty, trickle, window: rate.samples[rate.samples.length - 1][0] - rate.samples[0][0],
      trickleText: fpsOutText(0, trickle), serverText: fpsOutText(12.5, trickle),
      stalledText: fpsOutText(0, stalled.perSecond()), unknownText: fpsOutText(undefined, null),
    }));
    """
    web = Path(__file__).resolve().parents[2] / "web"
    got = json.loads(subprocess.run([NODE, "--input-type=module", "-e", script], cwd=web, capture_output=True, text=True, timeout=60, check=True).stdout)
    assert got["empty"] is None and got["window"] == 10000
    assert 0.25 < got["trickle"] < 0.45 and got["trickleText"] == f"{got['trickle']:.2f}"
    assert got["serverText"] == "12.5" and got["stalledText"] == "0" and got["unknownText"] == "–"
