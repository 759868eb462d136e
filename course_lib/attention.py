"""Chapter 3 — attention (being written)."""
