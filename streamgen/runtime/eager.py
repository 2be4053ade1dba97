"""``none``: torch eager, the model's own call slots as loaded."""

from __future__ import annotations

from typing import Any


class EagerBackend:
    name = "none"

    def unavailable_reason(self, device: Any) -> str | None:
        return None

    def accelerate_image(self, model: Any, cache: Any) -> None:
        return None

    def accelerate_video(self, model: Any, cache: Any) -> None:
        return None
