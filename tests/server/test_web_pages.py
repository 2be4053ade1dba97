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
