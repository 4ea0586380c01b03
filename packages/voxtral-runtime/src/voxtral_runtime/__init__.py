"""voxtral-runtime."""
