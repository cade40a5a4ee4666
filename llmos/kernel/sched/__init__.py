"""llmos.kernel.core.sched."""
