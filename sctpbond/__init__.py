"""sctpbond: one byte stream striped over several network paths (kernel SCTP or TCP).

Embedding: `sctpbond.connect([...])` and `sctpbond.listen(...)` are context managers giving a duplex Stream
(see sctpbond/api.py); errors are subclasses of `sctpbond.SctpbondError`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["connect", "listen", "Stream", "SctpbondError", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `python -m sctpbond` does not pay for the API's imports
    if name in ("connect", "listen", "Stream"):
        from . import api

        return getattr(api, name)
    if name == "SctpbondError":
        from .errors import SctpbondError

        return SctpbondError
    raise AttributeError(f"module 'sctpbond' has no attribute {name!r}")
