"""The files voxtral-export writes and voxtral-runtime reads, declared once (docs/pte.md)."""
