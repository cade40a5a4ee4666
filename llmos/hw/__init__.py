"""llmos.hw."""
