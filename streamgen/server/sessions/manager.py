"""``SessionManager``: opening, finding, limiting and closing sessions.

Opening a session is the same for ``/offer`` and WHIP: check the offer and
the settings (cheap, on the loop), take a place under ``max_sessions``
(503 when there is none), build the pipeline state on the model worker, then
answer the offer. If anything fails on the way the place is given back and
the half-built peer closed. Each session gets its own secret, which only
the answer that created it carries (see :mod:`streamgen.server.http.access`).
``streamgen camera``'s one stream opens the same way, less the offer
(:meth:`SessionManager.open_local`, :mod:`streamgen.server.sessions.local_session`).
WHEP viewers attach to an existing session.

A session whose peer has not connected yet (ICE still running, or an offer
that was never meant to connect) holds a place, so it is held to less:

- one client address may have at most ``max_pending_per_client`` of them
  (a 503 that says so for the next);
- when the server is full, or admission control has no room, a newcomer
  displaces one of them instead of being refused: one that has had
  ``connect_grace`` seconds to connect and has not (real peers connect
  within a second or two), or one of a client that holds several (see
  :meth:`SessionManager._displaceable`). So bare offers cannot keep a
  server "full".

A sweeper closes sessions whose peer never connected within
``connect_timeout``, sessions whose connected peer sent no packet at all for
``peer_timeout`` seconds (it vanished: see :mod:`streamgen.server.webrtc.liveness`;
WHEP viewers likewise), and connected sessions that sent no frame and no
control message for ``idle_timeout`` seconds (counted from the connection).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import CapacityError, ConfigError, InputError
from ...pipeline.contract import StreamShape
from ...sched import Slo, replica_order
from ..drain import Drain
from ..http.access import EndedSessions, new_session_secret
from ..webrtc.capture_track import CaptureTrack
from ..config import ServerConfig
from ..http.http_errors import NotFoundError
from .local_session import LocalOutput, LocalSession
from .memory import schedule_trim
from ..metrics import ServerMetrics
from ..webrtc.peer import add_transceivers, answer_offer, new_peer_connection, parse_offer
from ..worker.pipelines import model_kind
from .session import Session, Viewer
from ..worker.step_shape import ServerCaps, check_engine_limits
from ..webrtc.tracks import OutputTrack
from ..worker.model_worker import ModelWorker, Reservation

logger = logging.getLogger(__name__)
HOARD_MIN_AGE = 1.0  # seconds: a hoarding client's unconnected session may be displaced from this age on


def new_id() -> str:
    return secrets.token_hex(8)


class SessionManager:
    """All open sessions of one server (see module docstring)."""

    def __init__(self, config: ServerConfig, workers: list[ModelWorker], metrics: ServerMetrics) -> None:
        self.config = config
        self.workers = workers
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        pipeline = workers[0].pipeline
        self.kind = model_kind(pipeline)
        self.caps = ServerCaps.for_pipeline(pipeline, config.max_width, config.max_height)
        self._opening = 0
        self._opening_by: dict[str | None, int] = {}  # client address -> sessions it is opening now
        self._sweeper: asyncio.Task | None = None
        self._ended = EndedSessions()
        self._ice = config.ice  # the ICE servers of the server's own peers (a TURN secret gives each its credential)
        self.drain: Drain | None = None  # set by the app: while it drains, no new session is opened (server/drain.py)

    # --------------------------------------------------------------- lookups
    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFoundError(f"no session {session_id!r}; it may have ended (GET /api/sessions lists the open ones)")
        return session

    def ended_with_secret(self, session_id: str, given: str) -> str | None:
        """Why ``session_id`` ended, if it ended lately and ``given`` is its secret (its owner gets 404, not 401)."""
        return self._ended.reason_for(session_id, given)

    def describe_all(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.sessions.values()]

    # --------------------------------------------------------------- opening
    async def open(
        self, kind: str, offer_sdp: Any, settings: Mapping[str, Any], send_output: bool, slo: Any = None, client: str | None = None
    ) -> tuple[Session, str]:
        """A new publishing session for ``offer_sdp``; returns it and the answer SDP.

        Everything cheap is checked first, on the loop: the offer, the
        settings, the SLO the client asked for and the server's caps. Then
        admission control (CapacityError → 503 with the numbers) reserves the
        session's share of the model before its state is built on the setup
        thread, so concurrent offers cannot over-book the server.
        """
        self.check_not_draining()
        shape = parse_offer(offer_sdp)
        if not shape.has_video:
            raise _no_video_error()
        shape.check_codecs(self.config.codecs)
        worker, merged, session_slo, stream = self._check_settings(settings, slo)
        if stream.generates and not send_output:
            raise ConfigError(
                f"a {stream.kind} stream in mode {merged.get('mode')!r} takes no input, so there is nothing to publish over WHIP: "
                "open it with POST /offer (the page's 'No input' source, or any offer with a recvonly video section) "
                "and watch it over WHEP"
            )
        self._check_pending(client)
        await self._take_place_or_displace()
        self._opening_by[client] = self._opening_by.get(client, 0) + 1
        pc = None
        reservation = None
        try:
            worker, reservation = await self._reserve_or_displace(stream, session_slo)
            state = await asyncio.wrap_future(worker.submit(worker.pipeline.state_from_settings, merged))
            pc = new_peer_connection(self._ice.aiortc_servers())
            session = Session(new_id(), kind, pc, worker, state, self.config, self.metrics, self._forget, session_slo, self.caps, secret=new_session_secret())
            session.client = client
            output = OutputTrack() if send_output else None
            session.output = output
            transceiver = add_transceivers(pc, shape, _video_direction(stream, send_output), output, self.config.codecs)
            answer = await answer_offer(pc, offer_sdp, self.config.codecs)
        except BaseException:
            if reservation is not None:
                worker.release(reservation)
            if pc is not None:
                await pc.close()
            raise
        finally:
            self._opening -= 1
            self._opening_by[client] -= 1
            if not self._opening_by[client]:
                del self._opening_by[client]
        self._add(session, worker, reservation, stream)
        if stream.generates:  # no input: a clock asks for a chunk per chunk period (generation_clock.py)
            session.start_generating(stream.frames_per_unit / session_slo.target_fps)
        else:
            session.start_input(transceiver.receiver.track)
        return session, answer

    # ------------------------------------------------------- unconnected peers
    def _check_pending(self, client: str | None) -> None:
        """At most ``max_pending_per_client`` sessions of one address may be waiting for their peer to connect."""
        if client is None:
            return
        pending = self._opening_by.get(client, 0) + sum(
            1 for s in self.sessions.values() if not s.connected and not s.closed and getattr(s, "client", None) == client
        )
        limit = self.config.max_pending_per_client
        if pending >= limit:
            self.metrics.sessions_rejected += 1
            raise CapacityError(
                f"this client already has {pending} session(s) whose peer has not connected yet, the most one client may "
                f"({limit}); let them connect (or end them) first"
            )

    def _displaceable(self, now: float) -> Session | None:
        """The unconnected session a newcomer may displace, or None.

        A session whose peer has had ``connect_grace`` seconds and has not
        connected may go; so may one (a second old at least) of a client
        that holds two or more unconnected sessions, since real peers do not
        queue up unconnected offers. Among those, the client holding the
        most goes first, and its oldest session.
        """
        waiting = [s for s in self.sessions.values() if not s.connected and not s.closed]
        held = Counter(getattr(s, "client", None) for s in waiting)

        def eligible(session: Session) -> bool:
            age = now - session.stats.created_at
            return age >= self.config.connect_grace or (held[getattr(session, "client", None)] >= 2 and age >= HOARD_MIN_AGE)

        candidates = [s for s in waiting if eligible(s)]
        return max(candidates, key=lambda s: (held[getattr(s, "client", None)], -s.stats.created_at), default=None)

    async def _displace(self) -> bool:
        """Close one unconnected session to make room for a newcomer; False when there is none to close."""
        victim = self._displaceable(time.monotonic())
        if victim is None:
            return False
        self.metrics.count("sessions_displaced")
        grace = self.config.connect_grace
        age = time.monotonic() - victim.stats.created_at
        await victim.close(f"its peer had not connected after {age:.1f} s (grace {grace:g} s) and a newcomer needed the place")
        return True

    async def _take_place_or_displace(self) -> None:
        try:
            self._take_place()
        except CapacityError:
            if not await self._displace():
                raise
            self.metrics.sessions_rejected -= 1  # counted by the first try; this newcomer got in after all
            self._take_place()

    async def _reserve_or_displace(self, stream: StreamShape, slo: Slo) -> tuple[ModelWorker, Reservation]:
        try:
            return self._reserve(stream, slo)
        except CapacityError:
            if not await self._displace():
                raise
            return self._reserve(stream, slo)

    async def open_local(
        self, settings: Mapping[str, Any], track: CaptureTrack | None, output: LocalOutput | None, notice: Callable[[str], None], slo: Any = None
    ) -> LocalSession:
        """A session fed and shown by this process (``streamgen camera``): the checks, admission and state of :meth:`open`, no peer.

        ``track`` None: a stream that generates without input (txt2vid), paced by its generation clock.
        """
        worker, merged, session_slo, stream = self._check_settings(settings, slo)
        self._take_place()
        reservation = None
        try:
            worker, reservation = self._reserve(stream, session_slo)
            state = await asyncio.wrap_future(worker.submit(worker.pipeline.state_from_settings, merged))
            session = LocalSession(
                new_id(), worker, state, self.config, self.metrics, self._forget, session_slo, self.caps,
                secret=new_session_secret(), output=output, notice=notice,
            )
        except BaseException:
            if reservation is not None:
                worker.release(reservation)
            raise
        finally:
            self._opening -= 1
        self._add(session, worker, reservation, stream)
        if stream.generates:
            session.start_generating(stream.frames_per_unit / session_slo.target_fps)
        else:
            session.start_input(track)
        return session

    def _check_settings(self, settings: Mapping[str, Any], slo: Any) -> tuple[ModelWorker, dict[str, Any], Slo, StreamShape]:
        """The cheap checks, on the loop: settings over the defaults, the SLO asked for, the caps; picks the worker."""
        merged = {**self.config.default_params, **settings}
        worker = min(self.workers, key=lambda w: w.load)
        worker.pipeline.settings_shape(merged)  # the schema first: a bad value is named before anything else
        session_slo = self.config.slo_limits.parse(slo, self.config.default_slo)
        if self.kind == "video" and "use_denoising_batch" not in merged:
            merged["use_denoising_batch"] = self._video_mode(worker, merged, session_slo)
        stream = worker.pipeline.settings_shape(merged)
        self.caps.check_shape(stream)
        check_engine_limits(worker.pipeline, stream)
        return worker, merged, session_slo, stream

    def _reserve(self, stream: StreamShape, slo: Slo) -> tuple[ModelWorker, Reservation]:
        """The replica with the least predicted load that admits the session, and its place there.

        Replicas are tried in :func:`~streamgen.sched.admission.replica_order`
        of admission control's prediction with the new session added.
        CapacityError (counted) when none admits it.
        """
        predictions = [(worker.predict(stream, slo), worker.load) for worker in self.workers]
        refusal: CapacityError | None = None
        for worker in (self.workers[i] for i in replica_order(predictions)):
            try:
                return worker, worker.reserve(stream, slo)
            except CapacityError as error:  # its load changed since the prediction: try the next replica
                refusal = refusal or error
        self.metrics.count("admission_refusals")
        raise refusal if refusal is not None else CapacityError("the server has no model replica")

    def _add(self, session: Session, worker: ModelWorker, reservation: Reservation, stream: StreamShape) -> None:
        self.sessions[session.id] = session
        self.metrics.sessions_created += 1
        worker.attach(session, reservation)
        logger.info(
            "session %s opened (%s, %s, %dx%d, admitted at ~%.1f fps)",
            session.id, session.kind, worker.name, stream.width, stream.height, reservation.admission.fps,
        )

    def _video_mode(self, worker: ModelWorker, settings: Mapping[str, Any], slo: Slo) -> bool:
        """Stream batch or sequential denoising for a video session that did not choose (the scheduler's call)."""
        return worker.choose_video_mode(worker.pipeline.settings_shape(settings), slo)

    async def add_viewer(self, session_id: str, offer_sdp: Any) -> tuple[Viewer, str]:
        """A WHEP viewer of ``session_id``'s output; returns it and the answer SDP."""
        session = self.get(session_id)
        shape = parse_offer(offer_sdp)
        if not shape.has_video:
            raise _no_video_error()
        shape.check_codecs(self.config.codecs)
        if len(session.viewers) + session.viewers_joining >= self.config.max_viewers_per_session:
            raise CapacityError(f"session {session_id} already has {len(session.viewers)} viewers, the most this server allows")
        session.viewers_joining += 1  # the place is taken before the first await: concurrent offers cannot all pass the check
        try:
            pc = new_peer_connection(self._ice.aiortc_servers())
            track = OutputTrack()
            try:
                add_transceivers(pc, shape, "sendonly", track, self.config.codecs)
                answer = await answer_offer(pc, offer_sdp, self.config.codecs)
            except BaseException:
                track.stop()
                await pc.close()
                raise
            if session.closed:
                track.stop()
                await pc.close()
                raise NotFoundError(f"session {session_id!r} ended while the viewer was connecting")
            viewer = Viewer(new_id(), pc, track)
            session.add_viewer(viewer)
        finally:
            session.viewers_joining -= 1
        return viewer, answer

    def _take_place(self) -> None:
        if len(self.sessions) + self._opening >= self.config.max_sessions:
            self.metrics.sessions_rejected += 1
            raise CapacityError(f"the server is full: {self.config.max_sessions} of {self.config.max_sessions} sessions are in use; try again later")
        self._opening += 1

    def default_session_fits(self) -> bool:
        """Admission control's prediction for one more session of the server's default settings (readiness)."""
        try:
            _, _, slo, stream = self._check_settings({}, None)
        except Exception:  # noqa: BLE001 - defaults the model refuses: readiness says no room rather than failing
            return False
        return any(worker.predict(stream, slo).admitted for worker in self.workers)

    def check_not_draining(self) -> None:
        """CapacityError (503 + Retry-After) while the server drains for a restart: a proxy retries the newcomer elsewhere."""
        drain = self.drain
        if drain is not None and drain.draining:
            self.metrics.sessions_rejected += 1
            raise CapacityError(
                "the server is draining for a restart: it takes no new sessions (running ones go on); try another server or again shortly",
                retry_after=max(1, round(drain.left_s())) if drain.left_s() else 5,
            )

    # --------------------------------------------------------------- closing
    async def close(self, session_id: str, reason: str) -> None:
        await self.get(session_id).close(reason)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())), return_exceptions=True)

    def _forget(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self._ended.remember(session.id, session.secret, session.close_reason or "closed")
            self.metrics.retire(session.sample())
            schedule_trim(idle=not self.sessions)  # give freed codec and frame buffers back to the system (memory.py)

    # --------------------------------------------------------------- sweeper
    def start_sweeper(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        interval = min(1.0, self.config.idle_timeout / 4, self.config.connect_timeout / 4, self.config.peer_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            await self.sweep(time.monotonic())

    async def sweep(self, now: float) -> None:
        """Close sessions that never connected, whose peer vanished or that went idle; drop vanished viewers."""
        peer_timeout = self.config.peer_timeout
        for session in list(self.sessions.values()):
            if not session.connected and now - session.stats.created_at > self.config.connect_timeout:
                await session.close(f"the peer did not connect within {self.config.connect_timeout:g} s")
            elif session.connected and now - session.last_activity > self.config.idle_timeout:
                # idle counts from the connection on: before it, the connect timeout applies (a slow ICE is not idleness,
                # and a session closed before its control channel opens could not tell its peer why)
                await session.close(f"no input for {self.config.idle_timeout:g} s")
            elif session.connected and not session.closed and await session.liveness.silent_for(now) > peer_timeout:
                await session.close(f"the peer sent nothing for {peer_timeout:g} s (it vanished)")
            if session.closed:
                continue
            for viewer in list(session.viewers.values()):
                if viewer.pc.connectionState == "connected" and await viewer.liveness.silent_for(now) > peer_timeout:
                    logger.info("session %s: viewer %s sent nothing for %g s (it vanished); dropped", session.id, viewer.viewer_id, peer_timeout)
                    await session.remove_viewer(viewer.viewer_id)


def _video_direction(stream: StreamShape, send_output: bool) -> str:
    """The server's side of the video section: a generating stream only sends; ``/offer`` sends and receives; WHIP receives."""
    if stream.generates:
        return "sendonly"
    return "sendrecv" if send_output else "recvonly"


def _no_video_error() -> Exception:
    return InputError("the offer has no video section; send a video track (sendrecv for /offer, sendonly for WHIP, recvonly for WHEP)")
