"""sctpbond: one byte stream striped over several network paths (kernel SCTP or TCP)."""

__version__ = "0.1.0"
