"""The ``control`` data channel: live parameters in, acks and stats out.

Client → server (JSON text, one object per message)::

    {"type": "params", "id": 7, "params": {"prompt": "an oil painting", "strength": 0.5}}
    {"type": "reset", "id": 8}          # forget the stream's history, keep its parameters
    {"type": "ping", "id": 9}           # answered with an ack; measures the round trip

``params`` is exactly the body of ``PATCH /api/sessions/{id}/params`` (one
schema, :mod:`streamgen.params`, or the video pipeline's own for video
models). Every message is answered::

    {"type": "ack", "id": 7, "ok": true, "error": null}
    {"type": "ack", "id": null, "ok": false, "error": "message is not valid JSON"}

``id`` is echoed when it is a string, a number or null (anything else reads
back as null). The server also pushes ``{"type": "stats", ...}`` every
``stats_interval`` seconds (the fields of ``GET /api/sessions/{id}``'s
``stats``) and ``{"type": "error", "error": "..."}`` for problems that are
not an answer to a message (an input frame over the resolution limit, a
model error) and ``{"type": "closed", "reason": "..."}`` when it ends the
session (idle timeout, DELETE, model failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...config import is_finite_number
from ...errors import StreamgenError
from ..http.json_limits import too_deep

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
MESSAGE_TYPES = ("params", "reset", "ping")


@dataclass(frozen=True)
class ControlHandlers:
    """What a control message can do to its session."""

    update_params: Callable[[Mapping[str, Any]], Any]
    reset: Callable[[], Awaitable[None]]
    stats: Callable[[], dict[str, Any]]
    touch: Callable[[], None]  # any message counts as activity (idle timeout)


class ControlError(StreamgenError):
    """A control message that is malformed (answered with an error ack echoing its id, if readable)."""

    def __init__(self, text: str, message_id: Any = None) -> None:
        super().__init__(text)
        self.message_id = message_id


class ControlChannel:
    """Serves one peer's ``control`` data channel (see module docstring)."""

    def __init__(self, channel: Any, handlers: ControlHandlers, stats_interval: float) -> None:
        self.channel = channel
        self._handlers = handlers
        self._stats_interval = stats_interval
        self._stats_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._start_stats()
        else:
            channel.on("open", self._start_stats)
        channel.on("close", self.stop)

    def send(self, message: Mapping[str, Any]) -> None:
        if self.channel.readyState == "open":
            try:
                self.channel.send(json.dumps(message, allow_nan=False, default=str))
            except Exception as error:  # noqa: BLE001 - the transport went away; nothing to tell anyone
                logger.debug("control channel send failed: %s", error)

    def send_error(self, text: str) -> None:
        self.send({"type": "error", "error": text})

    def stop(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ messages
    def _on_message(self, raw: Any) -> None:
        task = asyncio.ensure_future(self._answer(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, raw: Any) -> None:
        self._handlers.touch()
        message_id = None
        try:
            message = parse_message(raw)
            message_id = message.get("id")
            await self._dispatch(message)
        except StreamgenError as error:
            if message_id is None:
                message_id = getattr(error, "message_id", None)
            self.send(ack(message_id, str(error)))
            return
        except asyncio.CancelledError:
            raise
        except (RecursionError, MemoryError, ValueError, TypeError) as error:  # a value built to break formatting, not a bug of ours
            logger.info("control message refused: %s", type(error).__name__)
            self.send(ack(message_id, f"the message could not be handled ({type(error).__name__}); check its values"))
            return
        except Exception:  # noqa: BLE001 - a bug: the client still gets its ack, the log the traceback, once per message
            logger.exception("control message failed")
            self.send(ack(message_id, "the server failed to handle this message (a bug, logged)"))
            return
        self.send(ack(message_id, None))

    async def _dispatch(self, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "params":
            params = message.get("params")
            if not isinstance(params, Mapping):
                raise ControlError('a "params" message needs a "params" object, e.g. {"type": "params", "id": 1, "params": {"prompt": "..."}}')
            await self._handlers.update_params(params)
        elif kind == "reset":
            await self._handlers.reset()

    def _start_stats(self) -> None:
        if self._stats_task is None:
            self._stats_task = asyncio.ensure_future(self._push_stats())

    async def _push_stats(self) -> None:
        while self.channel.readyState in ("connecting", "open"):
            await asyncio.sleep(self._stats_interval)
            self.send({"type": "stats", **self._handlers.stats()})


def _clean_id(message_id: Any) -> Any:
    return message_id if message_id is None or isinstance(message_id, str) or is_finite_number(message_id) else None


def parse_message(raw: Any) -> dict[str, Any]:
    """Decode and check one control message; raises :class:`ControlError` saying what is wrong."""
    if isinstance(raw, (bytes, bytearray)):
        raise ControlError("control messages must be JSON text, not binary")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ControlError(f"control message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as error:
        raise ControlError(f"message is not valid JSON: {error}") from None
    except RecursionError:
        raise ControlError("message is nested too deeply") from None
    deep = too_deep(message)
    if deep is not None:
        raise ControlError(f"message is {deep}", _clean_id(message.get("id")) if isinstance(message, dict) else None)
    if not isinstance(message, dict):
        raise ControlError(f"a control message must be a JSON object, got {type(message).__name__}")
    clean_id = _clean_id(message.get("id"))
    kind = message.get("type")
    unknown = set(message) - {"type", "id", "params"}
    if kind not in MESSAGE_TYPES:
        raise ControlError(f"unknown message type {kind!r}; use one of {', '.join(MESSAGE_TYPES)}", clean_id)
    if unknown:
        raise ControlError(f"unknown field(s) {', '.join(sorted(map(repr, unknown)))} in a {kind!r} message", clean_id)
    if kind != "params" and "params" in message:
        raise ControlError(f'a {kind!r} message takes no "params"', clean_id)
    return {**message, "id": clean_id}


def ack(message_id: Any, error: str | None) -> dict[str, Any]:
    return {"type": "ack", "id": message_id, "ok": error is None, "error": error}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")
