"""llmos.kernel.core.mm."""
