"""``VideoStream``: the Python streaming API for causal video models.

    stream = streamgen.VideoStream("tiny-video", prompt="a watercolor city")
    for frame in camera:
        for out in stream(frame):      # 0..n frames, same kind as the input
            show(out)
    stream.update(prompt="an oil painting", transition_chunks=4)
    tail = stream.flush()              # the frames still inside at the end of a clip

A video model works on chunks of 4 frames (the first chunk is 1 frame), so
one input frame gives no output most of the time and a whole chunk at once
every 4th frame; with stream batch the chunk comes out ``steps − 1`` chunks
later. ``stream(frame)`` therefore always returns a *list* of frames (each
of the input's kind: numpy array, torch tensor or ``av.VideoFrame`` with the
pts of the input frame it depicts). Many ``VideoStream`` objects may share
one :class:`~streamgen.pipeline.video.VideoPipeline`; each keeps its own state.

With ``devices=[...]`` (pipeline stages) a call hands the chunk to the
stages and returns at once with the frames finished since the last call,
so outputs arrive a call or more later than in one process; :meth:`flush`
waits for all of them.

Text to video: ``mode="txt2vid"`` takes no frames; each ``stream()`` call
generates the next chunk and returns the frames that came out (a list of
numpy uint8 (H, W, 3) arrays; with stream batch the first ``steps − 1``
calls return none, the chunks being in flight)::

    stream = streamgen.VideoStream("tiny-video", mode="txt2vid", prompt="a paper boat at sea", seed=7)
    frames = stream() + stream() + stream()
    stream.update(prompt="a paper boat in a storm", transition_chunks=2)
    frames += stream() + stream.flush()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from .errors import InputError
from .frames import FrameKind, frames_to_uint8, uint8_to_user
from .pipeline.output import StepOutput
from .pipeline.video import VideoPipeline
from .pipeline.video_params import VideoConfig, VideoParams
from .pipeline.video_state import VideoState

# Model options; ``seed`` is the stream's noise seed (a live parameter), ``model_seed`` seeds random weights.
# ``vae``, ``lora`` and ``fuse_lora`` are model options too (the loader says what video models make of them).
_SPEC_FIELDS = ("weights", "device", "devices", "dtype", "model_seed", "checkpoint", "checkpoint_key", "vae", "lora", "fuse_lora", "acceleration")


class VideoStream:
    """One live video stream: frames in, restyled frames out (in chunks), parameters changeable live.

    ``mode="txt2vid"``: no frames in; each call generates a chunk (numpy frames out).
    """

    def __init__(self, model: Any = "tiny-video", **settings: Any) -> None:
        from .pipeline.video_loading import load_video_pipeline  # noqa: PLC0415

        spec = {k: settings.pop(k) for k in _SPEC_FIELDS if k in settings}
        if "model_seed" in spec:
            spec["seed"] = spec.pop("model_seed")
        self.pipeline: VideoPipeline = load_video_pipeline(model, **spec)
        self.state: VideoState = self.pipeline.create_state(None, settings)
        self._lock = threading.Lock()
        # txt2vid outputs are numpy (H, W, 3) uint8: there is no input whose kind they could follow
        self._kind: FrameKind | None = FrameKind("numpy", True) if self.state.generates else None
        self._frames_seen = 0

    # ---- parameters -------------------------------------------------------
    @property
    def config(self) -> VideoConfig:
        return self.state.config

    @property
    def params(self) -> VideoParams:
        """Parameters in force (including an update not yet applied)."""
        return self.state.latest_params

    def update(self, changes: Mapping[str, Any] | None = None, **params: Any) -> VideoParams:
        """Change parameters live (the KV cache is kept, except for a change of num_inference_steps)."""
        return self.pipeline.update(self.state, changes, **params)

    def reset(self) -> None:
        """Start a new clip from the next frame (keeps parameters; frames still inside are dropped)."""
        with self._lock:
            self.pipeline.reset(self.state)

    # ---- frames -----------------------------------------------------------
    def stream(self, frames: Any = None) -> list[Any]:
        """Feed one frame (or a batch of frames); returns the 0..n output frames that became ready.

        A txt2vid stream takes no frames: each call generates the next chunk
        and returns the frames ready (numpy uint8 (H, W, 3) arrays).
        """
        if self.state.generates:
            if frames is not None:
                raise InputError("this video stream is txt2vid: call stream() without frames (each call generates the next chunk)")
            with self._lock:
                out = self.pipeline.step([self.state], [None])[0]
            return self._to_user(out, self._kind)
        if frames is None:
            raise InputError("this video stream is vid2vid: pass a frame (or a batch of frames); mode txt2vid generates without input")
        batch, kind = frames_to_uint8(frames)
        self._kind = kind
        pts = kind.pts or (None,) * batch.shape[0]
        with self._lock:
            tags = tuple((self._frames_seen + i, p) for i, p in enumerate(pts))
            self._frames_seen += batch.shape[0]
            out = self.pipeline.step([self.state], [batch], [tags])[0]
        return self._to_user(out, kind)

    __call__ = stream

    def flush(self) -> list[Any]:
        """End of a clip: the frames still inside the pipeline (padding is not returned)."""
        if self._kind is None:
            return []
        with self._lock:
            out = self.pipeline.flush(self.state)
        return self._to_user(out, self._kind)

    async def astep(self, frames: Any = None) -> list[Any]:
        """:meth:`stream` in a worker thread, for use from asyncio code."""
        return await asyncio.to_thread(self.stream, frames)

    async def astream(self, frames: AsyncIterable[Any], *, flush: bool = True) -> AsyncIterator[Any]:
        """Restyle an async iterator of frames, yielding output frames one by one as they are ready."""
        async for frame in frames:
            for out in await self.astep(frame):
                yield out
        if flush:
            for out in await asyncio.to_thread(self.flush):
                yield out

    @property
    def stats(self) -> dict[str, int]:
        counters = self.state.counters
        return {"frames_in": counters.frames_in, "frames_processed": counters.frames_processed, "frames_skipped": 0}

    @staticmethod
    def _to_user(out: StepOutput, kind: FrameKind) -> list[Any]:
        keep = [i for i, tag in enumerate(out.tags) if tag is not None]  # every input is tagged here; flush leaves padding out
        if not keep:
            return []
        frames = out.frames[keep]
        pts = tuple(out.tags[i][1] for i in keep) if kind.name == "av" else ()
        batch_kind = FrameKind(kind.name, True, kind.device, pts, kind.time_base)
        converted = uint8_to_user(frames, batch_kind)
        return list(converted)
