"""Prometheus metrics of one `llmos serve`, in the official client's text format at `/metrics`.

Each application has its own `CollectorRegistry` (never the process-global one), so tests can
build several apps in one process. Two kinds of series:

- read from the kernel at each scrape (`KernelCollector`, so they are never stale and cost
  nothing between scrapes):

      llmos_tokens_generated_total{user}      generated tokens (rate() gives tokens/s)
      llmos_tokens_prompt_total{user}         prompt tokens
      llmos_cpu_seconds_total{user}           seconds resident on a CPU
      llmos_processes_run_total{user}         processes run (live ones included)
      llmos_cost_total{user}                  cost at the configured prices (config.json)
      llmos_processes{state}                  live processes by state
      llmos_queue_depth                       runnable processes waiting for a CPU
      llmos_ready                             1 when ready, 0 while starting or draining

  The per-user counters are this server's life (exited and live processes: `Meter.totals`),
  so they only grow; a restart resets them, as Prometheus expects of counters.

- observed as things happen:

      llmos_time_to_first_token_seconds       histogram, per process that produced output
      llmos_http_request_duration_seconds{route, method, status}
                                              histogram; route is the route's template
                                              (`/api/processes/{pid}`), so pids never become
                                              labels; an event stream counts until it ends

Invariants: label values are bounded (users, states, route templates, statuses); a scrape
never blocks the kernel beyond the meter's short lock.

What this does not do: guard `/metrics` (the route does, with `--metrics-auth`), or push
anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Scope

from llmos import params
from llmos.front.serve.service import Service
from llmos.kernel.proc import LIVE, Process, State


class KernelCollector(Collector):
    """Series read from the kernel at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        kernel = self.service.kernel
        cfg = kernel.system.config
        families = {
            "gen": CounterMetricFamily(
                "llmos_tokens_generated", "Tokens generated, per user.", labels=["user"]
            ),
            "prompt": CounterMetricFamily(
                "llmos_tokens_prompt", "Prompt tokens processed, per user.", labels=["user"]
            ),
            "cpu": CounterMetricFamily(
                "llmos_cpu_seconds", "Seconds resident on a CPU, per user.", labels=["user"]
            ),
            "procs": CounterMetricFamily(
                "llmos_processes_run", "Processes run, per user.", labels=["user"]
            ),
            "cost": CounterMetricFamily(
                "llmos_cost", "Cost at the configured prices, per user.", labels=["user"]
            ),
        }
        for user, used in sorted(kernel.meter.totals().items()):
            families["gen"].add_metric([user], used.generated_tokens)
            families["prompt"].add_metric([user], used.prompt_tokens)
            families["cpu"].add_metric([user], used.cpu_s)
            families["procs"].add_metric([user], used.processes)
            cost = cfg.cost(used.prompt_tokens, used.generated_tokens, used.cpu_s)
            families["cost"].add_metric([user], cost)
        yield from families.values()
        counts = dict.fromkeys((s.value for s in LIVE), 0)
        for proc in kernel.table.all(include_exited=False):
            state = proc.state.value
            if state in counts:
                counts[state] += 1
        states = GaugeMetricFamily("llmos_processes", "Live processes by state.", labels=["state"])
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "llmos_queue_depth",
            "Runnable processes waiting for a CPU.",
            value=counts[State.RUNNABLE.value],
        )
        ready = self.service.ready and not self.service.draining
        yield GaugeMetricFamily("llmos_ready", "1 when ready for requests.", value=int(ready))


class Metrics:
    """The registry of one app: the kernel's series and the observed histograms."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(KernelCollector(service))
        self.ttft = Histogram(
            "llmos_time_to_first_token_seconds",
            "Time from a process's start to its first generated token.",
            buckets=params.METRICS_TTFT_BUCKETS_S,
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmos_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=params.METRICS_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        service.kernel.meter.on_exit.append(self.process_exited)

    def process_exited(self, proc: Process) -> None:
        result = proc.result
        ttft_ms = getattr(result, "ttft_ms", None)
        if ttft_ms is not None:
            self.ttft.observe(ttft_ms / 1000.0)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(route, method, str(status)).observe(seconds)


def route_of(scope: Scope) -> str:
    """The matched route's template; one label for every path that matched none."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
