"""llmos.kernel.sched: scheduling policies, the batching CPUs' dispatcher, the remote CPUs' gate."""
