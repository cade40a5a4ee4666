"""llmos.kernel.core."""
