"""llmos.store."""
