"""voxtral-runtime: run exported Voxtral Realtime programs (local transcription, gRPC server)."""

__version__ = "0.1.0"
