"""The exceptions streamgen raises for things a user can fix.

Every user mistake (bad frame, bad parameter, missing weights) surfaces as a
subclass of :class:`StreamgenError` with a message that says what was wrong
and, where possible, what to do instead. The server turns these into 4xx JSON
errors without logging a traceback; anything else is a bug and is logged.
"""

from __future__ import annotations


class StreamgenError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(StreamgenError, ValueError):
    """A parameter or configuration value is invalid or cannot be applied."""


class InputError(StreamgenError, ValueError):
    """A frame or other runtime input has the wrong shape, dtype or kind."""


class ModelLoadError(StreamgenError):
    """Model weights could not be found or loaded; the message says how to get them."""


class EngineError(StreamgenError):
    """A compiled backend (ONNX Runtime, TensorRT, torch.compile) could not be built or run."""


class CapacityError(StreamgenError):
    """The server or pipeline is full (too many sessions, queue limits, admission control).

    ``details`` (JSON-ready) carries the numbers behind a refusal, e.g.
    admission control's predicted utilisation and frame rate.
    """

    def __init__(self, message: str, details: dict | None = None, retry_after: int = 5) -> None:
        super().__init__(message)
        self.details = details
        self.retry_after = retry_after  # seconds a client (or a proxy) should wait before asking this server again
