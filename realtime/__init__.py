"""realtime: MongoDB writes as live updates for browsers and monitoring clients.

``realtime.connect(url)`` is the Python client (:func:`realtime.client.connect`),
imported on first use so the server does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["__version__", "connect"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from realtime.client import connect


def __getattr__(name: str) -> Any:
    if name == "connect":
        from realtime.client import connect

        return connect
    raise AttributeError(f"module 'realtime' has no attribute {name!r}")
