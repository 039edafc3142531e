"""Stage programs (one per stack) and the typed stage configuration."""
