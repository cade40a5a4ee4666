"""llmos.hw.cpu."""
