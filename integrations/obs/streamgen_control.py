"""Steer a streamgen stream from OBS: the HTTP requests, with Python's standard library only.

OBS runs scripts in its own embedded Python, which has no third-party
packages, and calls them on its UI thread. So this module uses ``urllib``
only, and :class:`Updater` sends from a thread of its own, one request at a
time: changes made while a request is in flight are merged and go next, so
typing a prompt does not queue a request per keystroke. It knows nothing of
OBS (``streamgen_obs.py`` is the OBS glue); tests run it against a real
server.

What it talks to, streamgen's stream-key API (docs/obs.md):

- ``PATCH {server}/api/streams/{key}/params``: a JSON object of live
  parameters for the stream's current session and its next ones;
- ``GET {server}/api/streams/{key}``: the current session, if any;

both with ``Authorization: Bearer <the key's follow secret or the admin
token>``. Every failure becomes a :class:`ControlError` carrying the
server's own JSON error message.
"""

from __future__ import annotations

import json
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_STREAM = "default"
MAX_OBS_SEED = 2**31 - 1  # OBS integer properties are 32-bit
TIMEOUT_SECONDS = 5.0
TEXT_FIELDS = ("prompt", "negative_prompt")
NUMBER_FIELDS = {"strength": float, "seed": int}
_NAMED_WHIP = re.compile(r"/whip/streams/([^/]+)$")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class ControlError(Exception):
    """A change that did not reach the stream: ``status`` is the HTTP status (None: no answer), the message says why."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"streamgen answered {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Target:
    """Which server and stream key to steer, with what credential."""

    base_url: str  # scheme://host:port plus any path prefix a reverse proxy adds
    stream: str
    credential: str

    @property
    def stream_url(self) -> str:
        return f"{self.base_url}/api/streams/{quote(self.stream, safe='')}"


def parse_target(url: str, credential: str = "") -> Target:
    """The target named by what the user pasted (see below); a ``credential`` typed separately wins over the URL's.

    ``url`` may be the browser-source URL the server gives for a stream
    (``http://host:8000/obs#stream=KEY&secret=...``, which holds both the key
    and its follow secret), the WHIP server URL as typed into OBS
    (``.../whip`` for the stream ``default``, ``.../whip/streams/KEY``) or
    the server's address alone.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ControlError(None, f"the server URL must start with http:// or https:// (e.g. http://127.0.0.1:8000/whip), got {url.strip()!r}")
    fragment = parse_qs(parts.fragment)
    stream = fragment.get("stream", [""])[0]
    given = credential.strip() or fragment.get("secret", [""])[0] or fragment.get("token", [""])[0]
    path = parts.path.rstrip("/")
    named = _NAMED_WHIP.search(path)
    if named:
        stream = stream or unquote(named.group(1))
        path = path[: named.start()]
    else:
        path = re.sub(r"/(whip|obs|watch)$", "", path)
    if not given:
        raise ControlError(None, "no credential: paste the browser-source URL streamgen gave for the stream (it holds the stream's secret), or put the admin token in the token field")
    return Target(f"{parts.scheme}://{parts.netloc}{path}", stream or DEFAULT_STREAM, given)


def params_of(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The live parameters OBS's fields hold; an empty text field is left out (the stream keeps its own value)."""
    params: dict[str, Any] = {name: fields[name] for name in TEXT_FIELDS if isinstance(fields.get(name), str) and fields[name].strip()}
    for name, kind in NUMBER_FIELDS.items():
        if fields.get(name) is not None:
            params[name] = kind(fields[name])
    return params


def random_seed(rng: random.Random | None = None) -> int:
    return (rng or random.SystemRandom()).randint(0, MAX_OBS_SEED)


# ------------------------------------------------------------------ requests
def params_request(target: Target, changes: Mapping[str, Any]) -> urllib.request.Request:
    """``PATCH /api/streams/{key}/params`` with ``changes``."""
    body = json.dumps(dict(changes), allow_nan=False).encode("utf-8")
    headers = {"Content-Type": "application/json", **_auth(target)}
    return urllib.request.Request(f"{target.stream_url}/params", data=body, headers=headers, method="PATCH")


def status_request(target: Target) -> urllib.request.Request:
    """``GET /api/streams/{key}``."""
    return urllib.request.Request(target.stream_url, headers=_auth(target), method="GET")


def _auth(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.credential}", "Accept": "application/json"}


def send(request: urllib.request.Request, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """The server's JSON answer; ControlError with the server's message (or why there was no answer) otherwise."""
    try:
        with _opener(request).open(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise ControlError(error.code, _error_message(error)) from None
    except urllib.error.URLError as error:
        raise ControlError(None, f"cannot reach streamgen at {_server_of(request)}: {error.reason}") from None
    except (OSError, ValueError) as error:  # timeouts, resets, an answer that is not JSON
        raise ControlError(None, f"no usable answer from streamgen at {_server_of(request)}: {error}") from None


def _opener(request: urllib.request.Request) -> urllib.request.OpenerDirector:
    """Direct to a server on this machine (a proxy from the environment cannot reach its loopback); as configured otherwise."""
    if (urlsplit(request.full_url).hostname or "") in _LOOPBACK:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _error_message(error: urllib.error.HTTPError) -> str:
    text = error.read().decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return text.strip()[:200] or str(error.reason)


def _server_of(request: urllib.request.Request) -> str:
    parts = urlsplit(request.full_url)
    return f"{parts.scheme}://{parts.netloc}"


def describe_answer(answer: Mapping[str, Any]) -> str:
    """One line for OBS's script log about a params or status answer."""
    stream = answer.get("stream")
    session = answer.get("session")
    if isinstance(session, Mapping):
        session = session.get("id")
    if session is None:
        return f"stream {stream!r}: nothing publishes to it now; changes are kept for its next session"
    return f"stream {stream!r}: session {session} is live"


# ------------------------------------------------------------------- updater
class Updater:
    """Sends what changed in OBS's fields, from a thread of its own (see module docstring).

    :meth:`fields_changed` is called with OBS's connection fields (server
    URL, credential) and parameter fields each time they may have changed;
    the first call only learns them (OBS calls it when the script loads,
    and the stream keeps what it was told before), later ones send the
    parameters that differ. :meth:`send_all` sends every non-empty field,
    :meth:`check` asks for the stream's state. Outcomes and errors go to
    ``report``, one line each.
    """

    def __init__(self, report: Callable[[str], None], timeout: float = TIMEOUT_SECONDS) -> None:
        self._report = report
        self._timeout = timeout
        self._wake = threading.Condition()
        self._connection = ("", "")
        self._known: dict[str, Any] | None = None
        self._pending: dict[str, Any] = {}
        self._check = False
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="streamgen-control", daemon=True)
        self._thread.start()

    def fields_changed(self, url: str, credential: str, fields: Mapping[str, Any]) -> None:
        params = params_of(fields)
        with self._wake:
            self._connection = (url, credential)
            if self._known is not None:
                self._pending.update({k: v for k, v in params.items() if self._known.get(k, _UNSET) != v})
            self._known = params
            self._wake.notify()

    def send_all(self, url: str, credential: str, fields: Mapping[str, Any]) -> None:
        params = params_of(fields)
        with self._wake:
            self._connection = (url, credential)
            self._known = params
            self._pending.update(params)
            self._wake.notify()

    def check(self, url: str, credential: str) -> None:
        with self._wake:
            self._connection = (url, credential)
            self._check = True
            self._wake.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight; False if that took longer than ``timeout`` seconds."""
        with self._wake:
            return self._wake.wait_for(lambda: not (self._pending or self._check or self._busy), timeout)

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join(self._timeout + 1)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopped or self._pending or self._check)
                if self._stopped:
                    return
                changes, self._pending = self._pending, {}
                check, self._check = self._check, False
                url, credential = self._connection
                self._busy = True
            try:
                self._send(url, credential, changes, check)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _send(self, url: str, credential: str, changes: dict[str, Any], check: bool) -> None:
        try:
            target = parse_target(url, credential)
            if changes:
                answer = send(params_request(target, changes), self._timeout)
                self._report(f"sent {', '.join(sorted(changes))}; {describe_answer(answer)}")
            if check:
                self._report(describe_answer(send(status_request(target), self._timeout)))
        except ControlError as error:
            self._report(str(error))
        except Exception as error:  # noqa: BLE001 - a bug must not stop the thread: later changes would be lost silently
            self._report(f"streamgen control failed unexpectedly: {error!r}")


_UNSET = object()
