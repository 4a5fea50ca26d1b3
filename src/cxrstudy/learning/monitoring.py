"""Prometheus metrics for a training run: an HTTP endpoint to scrape and, optionally, pushes to a Pushgateway.

Off by default (`monitor` in params.yaml). The training loop opens one monitor per seed and reports to it::

    monitor = open_monitor(params.monitor, seed=seed, rank=rank)
    monitor.step(epoch=epoch, step=global_step, loss=loss, images=batch_size, seconds=step_seconds, lr=lr)
    monitor.epoch_end(epoch=epoch, val_loss=val_loss, val_auroc=val_auroc)   # pushes, if a gateway is configured
    monitor.close()                                                          # final push; stops the endpoint

Every series (`METRIC_NAMES`) carries a ``seed`` label and follows Prometheus naming. Each monitor owns its own
`CollectorRegistry`, so several monitors never collide and nothing is added to prometheus_client's global registry.

Monitoring never stops a training run: a failed push is a `MonitorWarning` (logged instead when warnings are
errors) and counted in ``cxr_train_push_failures_total``; an endpoint that cannot bind its port is a warning too.
A signal that stops training (`errors.Interrupted`, `KeyboardInterrupt`) is a `BaseException`: it goes through.
"""

from __future__ import annotations

import logging
import warnings
from threading import Thread
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

from cxrstudy.params import MonitorParams

log = logging.getLogger(__name__)

GAUGES = {
    "cxr_train_epoch": "Current training epoch.",
    "cxr_train_step": "Global optimiser step last reported.",
    "cxr_train_loss": "Training loss of the last step.",
    "cxr_train_images_per_second": "Training throughput over the current epoch's steps so far, in images per second.",
    "cxr_train_learning_rate": "Learning rate of the last step.",
    "cxr_val_loss": "Validation loss at the end of the last epoch.",
    "cxr_val_auroc": "Mean validation AUROC at the end of the last epoch.",
    "cxr_train_last_update_timestamp_seconds": "Unix time of the last step or epoch end reported.",
    "cxr_train_finished": "1 once the training run has closed its monitor, else 0.",
}
COUNTERS = {  # prometheus_client adds the _total suffix to a counter's sample name
    "cxr_train_steps_total": "Optimiser steps taken by this process.",
    "cxr_train_images_total": "Training images processed by this process.",
    "cxr_train_push_failures_total": "Pushes to the Pushgateway that failed.",
}
STEP_SECONDS = "cxr_train_step_seconds"  # a histogram: _bucket, _count, _sum
# Wall-clock seconds of one optimiser step, from a tiny CPU model to a large batch on a slow disk.
STEP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The series a monitor exports (as they appear on /metrics), each labelled by seed.
METRIC_NAMES = (*GAUGES, *COUNTERS, STEP_SECONDS)


class MonitorWarning(RuntimeWarning):
    """Monitoring could not do its job (a push failed, the endpoint could not bind); training goes on."""


class Monitor(Protocol):
    """What the training loop reports to."""

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Record one optimiser step: `images` trained on in `seconds` of wall-clock time, at rate `lr`."""

    def epoch_end(self, *, epoch: int, val_loss: float, val_auroc: float) -> None:
        """Record an epoch's validation results and push them, if a gateway is configured."""

    def close(self) -> None:
        """Push a last time and stop the endpoint; calling it again does nothing."""


class NullMonitor:
    """A `Monitor` that records nothing: ranks other than 0, and runs with monitoring switched off."""

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Do nothing."""

    def epoch_end(self, *, epoch: int, val_loss: float, val_auroc: float) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


class PrometheusMonitor:
    """A `Monitor` exporting one seed's training progress on its own registry, served over HTTP (`params.port`)
    and/or pushed to a Pushgateway (`params.pushgateway`)."""

    def __init__(self, params: MonitorParams, *, seed: int) -> None:
        self.params = params
        self.seed = seed
        self.registry = CollectorRegistry(auto_describe=True)
        self.url: str | None = None  # the endpoint's /metrics URL, once it serves one
        self._closed = False
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        # Throughput over the current epoch's steps so far (steadier than one step's images/seconds).
        self._epoch: int | None = None
        self._epoch_images = 0
        self._epoch_seconds = 0.0

        labels, seed_label = ("seed",), str(seed)
        self._gauges = {name: Gauge(name, doc, labels, registry=self.registry).labels(seed_label)
                        for name, doc in GAUGES.items()}
        self._counters = {name: Counter(name, doc, labels, registry=self.registry).labels(seed_label)
                          for name, doc in COUNTERS.items()}
        self._step_seconds = Histogram(STEP_SECONDS, "Wall-clock duration of one training step, in seconds.", labels,
                                       registry=self.registry, buckets=STEP_SECONDS_BUCKETS).labels(seed_label)
        self._set(cxr_train_finished=0)
        if params.port is not None:
            self._serve(params.port, params.bind)

    @property
    def port(self) -> int | None:
        """The port the HTTP endpoint is bound to (the one chosen when configured as 0), or None if none."""
        return None if self._server is None else int(self._server.server_address[1])

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Record one optimiser step: `images` trained on in `seconds` of wall-clock time, at rate `lr`."""
        if epoch != self._epoch:
            self._epoch, self._epoch_images, self._epoch_seconds = epoch, 0, 0.0
        self._epoch_images += images
        self._epoch_seconds += seconds
        self._counters["cxr_train_steps_total"].inc()
        self._counters["cxr_train_images_total"].inc(images)
        self._step_seconds.observe(seconds)
        self._set(cxr_train_epoch=epoch, cxr_train_step=step, cxr_train_loss=loss, cxr_train_learning_rate=lr)
        if self._epoch_seconds > 0:
            self._set(cxr_train_images_per_second=self._epoch_images / self._epoch_seconds)

    def epoch_end(self, *, epoch: int, val_loss: float, val_auroc: float) -> None:
        """Record the validation results of `epoch` and push everything to the gateway, if one is configured."""
        self._set(cxr_train_epoch=epoch, cxr_val_loss=val_loss, cxr_val_auroc=val_auroc)
        self.push(f"end of epoch {epoch}")

    def push(self, when: str) -> None:
        """Push the registry to the gateway, if one is configured. A failure warns and is counted, never raised."""
        gateway = self.params.pushgateway
        if gateway is None:
            return
        try:
            push_to_gateway(gateway, job=self.params.job, registry=self.registry,
                            grouping_key={"seed": str(self.seed)}, timeout=self.params.push_timeout_s)
        except Exception as err:  # monitoring must never stop the training run (a signal is no Exception)
            self._counters["cxr_train_push_failures_total"].inc()
            self._warn(f"push to Pushgateway {gateway} failed ({when}): {type(err).__name__}: {err}; "
                       "training continues")

    def close(self) -> None:
        """Mark the run finished, push a last time and stop the HTTP endpoint; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._set(cxr_train_finished=1)
        self.push("at close")
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def _set(self, **values: float) -> None:
        """Set the named gauges, and the time of this update."""
        for name, value in values.items():
            self._gauges[name].set(value)
        self._gauges["cxr_train_last_update_timestamp_seconds"].set_to_current_time()

    def _serve(self, port: int, bind: str) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as err:
            self._warn(f"cannot serve metrics on {bind}:{port} ({err}); training continues without the HTTP "
                       "endpoint (set monitor.port to 0 for any free port, or null for none)")
            return
        host = f"[{bind}]" if ":" in bind else bind
        self.url = f"http://{host}:{self.port}/metrics"
        log.info("serving metrics for seed %s on %s", self.seed, self.url)

    def _warn(self, message: str) -> None:
        message = f"cxrstudy.learning.monitoring (seed {self.seed}): {message}"
        try:
            warnings.warn(message, MonitorWarning, stacklevel=2)
        except Warning:  # warnings made errors (-W error): still report it, but never stop the training run
            log.warning("%s", message)


def open_monitor(params: MonitorParams, *, seed: int, rank: int = 0) -> Monitor:
    """The monitor for one seed's training run: a `PrometheusMonitor` on rank 0 when an endpoint or a gateway is
    configured, otherwise a `NullMonitor`."""
    if rank != 0 or (params.port is None and params.pushgateway is None):
        return NullMonitor()
    return PrometheusMonitor(params, seed=seed)
