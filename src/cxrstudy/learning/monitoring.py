"""Prometheus metrics for a training run: an HTTP endpoint to scrape and, optionally, pushes to a Pushgateway.

The training loop opens one monitor per seed and reports to it::

    monitor = open_monitor(params.monitor, seed=seed, rank=rank)
    monitor.step(epoch=epoch, step=global_step, loss=loss, images=batch_size, seconds=step_seconds, lr=lr)
    monitor.epoch_end(epoch=epoch, val_loss=val_loss, val_auroc=val_auroc)   # pushes, if a gateway is configured
    monitor.close()                                                          # final push; stops the endpoint

Every series carries a ``seed`` label and follows Prometheus naming (base units, ``_seconds``, ``_total`` for
counters). Each monitor owns its own `CollectorRegistry`, so several monitors (tests, or seeds in one process)
never collide, and nothing is added to prometheus_client's global registry.

Monitoring never stops a training run: a failed push (gateway down, slow, refusing) is reported as a
`MonitorWarning` and counted in ``cxr_train_push_failures_total``; an endpoint that cannot bind its port is a
warning too, and the run goes on without it (with warnings turned into errors, these are logged instead).
A signal that stops training (`errors.Interrupted`, `KeyboardInterrupt`) is a `BaseException`: it goes through.
Only rank 0 of a distributed run reports; the other ranks, and runs with neither an endpoint nor a gateway
configured, get a `NullMonitor` that does nothing.
"""

from __future__ import annotations

import logging
import threading
import warnings
from types import TracebackType
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

from cxrstudy.params import MonitorParams

__all__ = [
    "METRIC_NAMES",
    "Monitor",
    "MonitorParams",
    "MonitorWarning",
    "NullMonitor",
    "PrometheusMonitor",
    "open_monitor",
]

log = logging.getLogger(__name__)

# Wall-clock seconds of one optimiser step, from a tiny CPU model to a large batch on a slow disk.
STEP_SECONDS_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The series a monitor exports (sample names, as they appear on /metrics), each labelled by seed.
METRIC_NAMES: tuple[str, ...] = (
    "cxr_train_epoch",
    "cxr_train_step",
    "cxr_train_steps_total",
    "cxr_train_images_total",
    "cxr_train_loss",
    "cxr_train_images_per_second",
    "cxr_train_learning_rate",
    "cxr_train_step_seconds",  # histogram: _bucket, _count, _sum
    "cxr_val_loss",
    "cxr_val_auroc",
    "cxr_train_last_update_timestamp_seconds",
    "cxr_train_finished",
    "cxr_train_push_failures_total",
)

class MonitorWarning(RuntimeWarning):
    """Monitoring could not do its job (a push failed, the endpoint could not bind); training goes on."""


class Monitor(Protocol):
    """What the training loop calls; `PrometheusMonitor` and `NullMonitor` both provide it."""

    @property
    def port(self) -> int | None:
        """The port the HTTP endpoint is bound to, or None when there is none."""
        ...

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Record one optimiser step."""
        ...

    def epoch_end(self, *, epoch: int, val_loss: float | None = None, val_auroc: float | None = None) -> None:
        """Record an epoch's validation results and push them, if a gateway is configured."""
        ...

    def close(self) -> None:
        """Push a last time, stop the endpoint; calling it again does nothing."""
        ...


class NullMonitor:
    """A monitor that records nothing: ranks other than 0, and runs with monitoring switched off."""

    @property
    def port(self) -> int | None:
        """Always None: a null monitor serves no endpoint."""
        return None

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Do nothing."""

    def epoch_end(self, *, epoch: int, val_loss: float | None = None, val_auroc: float | None = None) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""

    def __enter__(self) -> NullMonitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PrometheusMonitor:
    """Exports one seed's training progress on its own registry, served over HTTP and/or pushed to a gateway."""

    def __init__(self, params: MonitorParams, *, seed: int) -> None:
        self.params = params
        self.seed = seed
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._closed = False
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        # Throughput over the current epoch's steps so far (steadier than one step's images/seconds).
        self._epoch: int | None = None
        self._epoch_images = 0
        self._epoch_seconds = 0.0

        r, s = self.registry, str(seed)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ("seed",), registry=r).labels(seed=s)

        def counter(name: str, doc: str) -> Counter:
            # prometheus_client appends _total to a counter's sample name.
            return Counter(name.removesuffix("_total"), doc, ("seed",), registry=r).labels(seed=s)

        self._g_epoch = gauge("cxr_train_epoch", "Current training epoch.")
        self._g_step = gauge("cxr_train_step", "Global optimiser step last reported.")
        self._c_steps = counter("cxr_train_steps_total", "Optimiser steps taken by this process.")
        self._c_images = counter("cxr_train_images_total", "Training images processed by this process.")
        self._g_loss = gauge("cxr_train_loss", "Training loss of the last step.")
        self._g_ips = gauge(
            "cxr_train_images_per_second",
            "Training throughput over the current epoch's steps so far, in images per second.",
        )
        self._g_lr = gauge("cxr_train_learning_rate", "Learning rate of the last step.")
        self._h_step = Histogram(
            "cxr_train_step_seconds",
            "Wall-clock duration of one training step, in seconds.",
            ("seed",),
            registry=r,
            buckets=STEP_SECONDS_BUCKETS,
        ).labels(seed=s)
        self._g_val_loss = gauge("cxr_val_loss", "Validation loss at the end of the last epoch.")
        self._g_val_auroc = gauge("cxr_val_auroc", "Mean validation AUROC at the end of the last epoch.")
        self._g_updated = gauge(
            "cxr_train_last_update_timestamp_seconds", "Unix time of the last step or epoch end reported."
        )
        self._g_finished = gauge("cxr_train_finished", "1 once the training run has closed its monitor, else 0.")
        self._c_push_failures = counter("cxr_train_push_failures_total", "Pushes to the Pushgateway that failed.")
        self._g_finished.set(0)
        self._g_updated.set_to_current_time()

        if params.port is not None:
            self._start_endpoint(params.port, params.bind)

    # -- endpoint ------------------------------------------------------------------------------------------------

    def _start_endpoint(self, port: int, bind: str) -> None:
        try:
            server, thread = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as err:
            self._warn(
                f"cannot serve metrics on {bind}:{port} ({err}); training continues without the HTTP endpoint "
                "(set monitor.port to 0 for any free port, or null for none)"
            )
            return
        thread.name = f"cxr-metrics-seed{self.seed}"
        self._server, self._thread = server, thread
        log.info("serving metrics for seed %s on %s", self.seed, self.url)

    @property
    def port(self) -> int | None:
        """The port the HTTP endpoint is bound to (the one chosen when configured as 0), or None if none."""
        if self._server is None:
            return None
        return int(self._server.server_address[1])

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the HTTP endpoint listens on, or None if none."""
        if self._server is None:
            return None
        return str(self._server.server_address[0]), int(self._server.server_address[1])

    @property
    def url(self) -> str | None:
        """The endpoint's metrics URL, e.g. ``http://127.0.0.1:9400/metrics``, or None if none."""
        if self.address is None:
            return None
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    # -- reporting -----------------------------------------------------------------------------------------------

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Record one optimiser step: ``images`` trained on in ``seconds`` of wall-clock time, at rate ``lr``."""
        if images < 0 or seconds < 0:
            raise ValueError(f"step: images ({images}) and seconds ({seconds}) must be non-negative")
        with self._lock:
            if epoch != self._epoch:
                self._epoch, self._epoch_images, self._epoch_seconds = epoch, 0, 0.0
            self._epoch_images += images
            self._epoch_seconds += seconds
            self._g_epoch.set(epoch)
            self._g_step.set(step)
            self._c_steps.inc()
            self._c_images.inc(images)
            self._g_loss.set(loss)
            self._g_lr.set(lr)
            self._h_step.observe(seconds)
            if self._epoch_seconds > 0:
                self._g_ips.set(self._epoch_images / self._epoch_seconds)
            self._g_updated.set_to_current_time()

    def epoch_end(self, *, epoch: int, val_loss: float | None = None, val_auroc: float | None = None) -> None:
        """Record the validation results of ``epoch`` and push everything to the gateway, if one is configured."""
        with self._lock:
            self._g_epoch.set(epoch)
            if val_loss is not None:
                self._g_val_loss.set(val_loss)
            if val_auroc is not None:
                self._g_val_auroc.set(val_auroc)
            self._g_updated.set_to_current_time()
        self.push(f"end of epoch {epoch}")

    def push(self, when: str = "on request") -> bool:
        """Push the registry to the gateway; True on success. A failure warns and is counted, never raised."""
        gateway = self.params.pushgateway
        if gateway is None:
            return False
        try:
            push_to_gateway(
                gateway,
                job=self.params.job,
                registry=self.registry,
                grouping_key={"seed": str(self.seed)},
                timeout=self.params.push_timeout_s,
            )
        except Exception as err:  # monitoring must never stop the training run (a signal is no Exception)
            self._c_push_failures.inc()
            self._warn(
                f"push to Pushgateway {gateway} failed ({when}): {type(err).__name__}: {err}; training continues"
            )
            return False
        return True

    def close(self) -> None:
        """Mark the run finished, push a last time and stop the HTTP endpoint; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._g_finished.set(1)
            self._g_updated.set_to_current_time()
        self.push("at close")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _warn(self, message: str) -> None:
        message = f"cxrstudy.learning.monitoring (seed {self.seed}): {message}"
        try:
            warnings.warn(message, MonitorWarning, stacklevel=2)
        except Warning:  # warnings made errors (-W error): still report it, but never stop the training run
            log.warning("%s", message)

    def __enter__(self) -> PrometheusMonitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_monitor(params: MonitorParams, *, seed: int, rank: int = 0) -> PrometheusMonitor | NullMonitor:
    """The monitor for one seed's training run: a `PrometheusMonitor` on rank 0 when an endpoint or a gateway is
    configured, otherwise a `NullMonitor`."""
    if rank != 0 or (params.port is None and params.pushgateway is None):
        return NullMonitor()
    return PrometheusMonitor(params, seed=seed)
