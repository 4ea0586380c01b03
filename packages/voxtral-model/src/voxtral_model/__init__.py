"""voxtral-model."""
