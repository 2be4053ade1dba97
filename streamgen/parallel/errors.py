"""The error a stream gets when the pipeline stages can no longer run it."""

from __future__ import annotations

from ..errors import CapacityError, StreamgenError


class StageFailure(CapacityError):
    """A stage rank died, hung or failed: the sessions it served end with this reason, new ones are refused.

    A :class:`~streamgen.errors.CapacityError`, so the server answers 503
    with the reason instead of a bare 500: the request was fine, the server
    cannot run it any more. ``ends_stream``: the server closes the sessions
    that get it (with this message as the reason) instead of carrying on.
    """

    ends_stream = True


class StreamFault(StreamgenError):
    """The stages failed on this stream's rows (an exception in a forward or a decode); other streams go on.

    Its KV-cache layers may now differ between ranks (the ranks before the
    failing one committed the chunk), so the stream ends with the reason;
    the stages themselves are fine.
    """

    ends_stream = True
