"""voxtral-client."""
