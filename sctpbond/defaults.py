"""Constants the product and the lab share (the lab drives the product from outside and must agree with it)."""

from __future__ import annotations

DEFAULT_PORT = 7300  # the listener's port, TCP and SCTP alike
