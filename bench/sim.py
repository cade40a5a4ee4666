"""The fleet at internet scale, by simulation: the kernel's real scheduler and routers driven by
synthetic traces at 10, 100 and 1,000 CPUs.

Each fleet size gets one trace (`llmos.kernel.sched.simtrace.make_trace`: 40 requests and 20 users
per CPU, so 40,000 requests from 20,000 users at 1,000 CPUs; heavy-tailed prompt and output
lengths; Zipf-popular shared system prompts; users continuing their conversations; Poisson
arrivals at 70% of the fleet's capacity; one CPU in twenty failing for a minute). Every router
runs the same trace; each CPU places its jobs step by step with the kernel's `fair` policy.

Columns: prefix-cache hit rate (prompt tokens found cached / prompt tokens), time to first
token p50 and p99 (simulated seconds, from arrival), Jain's fairness over users (of each
user's output tokens per second of latency), the router's own cost per decision (wall
microseconds, mean and p99, measured around each real call), requests completed.

    python bench/sim.py [--sizes 10,100,1000] [--seed N]      (BENCH_QUICK=1: sizes 10, 100)

Goal: the llmos router keeps prefix affinity's cache hits without its hot spots: a hit rate
near prefix affinity's, time to first token p99 no worse than least loaded's, fairness no
worse than round robin's; every request completed at every size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, quick, table

from llmos.kernel.sched import sim, simtrace


def routers() -> list[sim.Router]:
    return [sim.RoundRobin(), sim.LeastLoaded(), sim.PrefixAffinity(), sim.LlmosRouter()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100" if quick() else "10,100,1000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[list[Any]] = []
    result: dict[str, Any] = {}
    cost = simtrace.CostModel()
    for n in sizes:
        trace = simtrace.make_trace(simtrace.Workload.for_fleet(n, seed=args.seed), n, cost)
        for router in routers():
            t0 = time.perf_counter()
            report = sim.Simulation(trace, router, n, cost=cost).run()
            took = time.perf_counter() - t0
            rows.append([*report.row(), f"{took:.1f}"])
            result.setdefault(str(n), {})[report.router] = {
                "hit_rate": round(report.hit_rate, 4),
                "ttft_p50_s": round(report.ttft_p50_s, 3),
                "ttft_p99_s": round(report.ttft_p99_s, 3),
                "jain": round(report.jain, 4),
                "route_us_mean": round(report.route_us_mean, 2),
                "route_us_p99": round(report.route_us_p99, 2),
                "completed": report.completed,
                "lost": report.lost,
                "requests": report.requests,
                "wall_s": round(took, 2),
            }
    print(
        table(
            [
                "CPUs",
                "router",
                "cache hits",
                "TTFT p50 s",
                "TTFT p99 s",
                "Jain",
                "route us",
                "completed",
                "wall s",
            ],
            rows,
        )
    )
    complete = all(r["lost"] == 0 for by in result.values() for r in by.values())
    emit("sim", {"sizes": sizes, "seed": args.seed, "results": result, "all_completed": complete})


if __name__ == "__main__":
    main()
