"""broadcast: a WHIP ingest / WHEP egress live broadcast server that forwards RTP."""

__version__ = "0.1.0"

__all__ = ["__version__"]
