"""voxtral-export."""
