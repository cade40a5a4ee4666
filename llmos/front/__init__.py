"""llmos.front."""
