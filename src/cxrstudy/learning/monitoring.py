"""Prometheus metrics for a training run: an HTTP endpoint to scrape and, optionally, pushes to a Pushgateway.

Off by default (`monitor` in params.yaml). The training loop opens one monitor per seed and reports to it::

    monitor = open_monitor(params.monitor, seed=seed, rank=rank)
    monitor.step(epoch=epoch, step=global_step, loss=loss, images=batch_size, seconds=step_seconds, lr=lr)
    monitor.epoch_end(epoch=epoch, val_loss=val_loss, val_auroc=val_auroc)   # asks for a push, if a gateway is set
    monitor.close()    # on success: a last push (waited for at most push_timeout_s); stops the endpoint
    monitor.abort()    # on a failure or a signal: no push; stops the endpoint

Every series (`METRIC_NAMES`) carries a ``seed`` label and follows Prometheus naming. Each monitor owns its own
`CollectorRegistry`, so several monitors never collide and nothing is added to prometheus_client's global registry.

Monitoring never holds up or stops a training run. Pushes go out from a thread of their own: the training loop never
waits on the network but in `close`, and there a signal still interrupts it at once. A push is given
`push_timeout_s` in all (connecting, sending, the whole answer: a gateway that answers one byte at a time cannot stretch
it), then its connection is cut. A failed push is a `MonitorWarning` (logged instead when warnings are errors) and
counted in ``cxr_train_push_failures_total``; an endpoint that cannot bind its port is a warning too. After `abort`
nothing is pushed: the push in flight is cut and none is started.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from threading import Thread
from typing import Any, Protocol
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
        """Record an epoch's validation results and ask for a push, if a gateway is configured."""

    def close(self) -> None:
        """The run succeeded: push a last time (waiting at most the push timeout) and stop the endpoint."""

    def abort(self) -> None:
        """The run failed or was interrupted: push nothing more (cut a push in flight) and stop the endpoint."""


class NullMonitor:
    """A `Monitor` that records nothing: ranks other than 0, and runs with monitoring switched off."""

    def step(self, *, epoch: int, step: int, loss: float, images: int, seconds: float, lr: float) -> None:
        """Do nothing."""

    def epoch_end(self, *, epoch: int, val_loss: float, val_auroc: float) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""

    def abort(self) -> None:
        """Do nothing."""


class _Cuttable:
    """An urllib handler whose connections are opened through `connect`, which keeps hold of their sockets."""

    def __init__(self, connect: Callable[..., socket.socket]) -> None:
        super().__init__()
        self._connect = connect

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        def connection(host: str, **options: Any) -> http.client.HTTPConnection:
            conn = http_class(host, **options)
            conn._create_connection = self._connect  # what HTTPConnection.connect opens its socket with
            return conn

        return super().do_open(connection, req, **kwargs)  # type: ignore[misc]


class _CuttableHTTP(_Cuttable, urllib.request.HTTPHandler):
    pass


class _CuttableHTTPS(_Cuttable, urllib.request.HTTPSHandler):
    pass


class _Pusher:
    """Pushes a registry to a Pushgateway from a thread of its own, one push at a time. A push asked for while one is
    in flight waits, and only the latest (it carries everything an earlier one would). Each push is given `timeout`
    seconds in all, then its sockets are shut down, which ends it whatever it was waiting for."""

    def __init__(self, gateway: str, job: str, registry: CollectorRegistry, seed: int, timeout: float,
                 failures: Counter) -> None:
        self.gateway, self.timeout = gateway, timeout
        self._job, self._registry, self._seed = job, registry, str(seed)
        self._failure_count = failures
        self._cond = threading.Condition()
        self._wanted: str | None = None  # when the push asked for and not started was asked for ("end of epoch 3")
        self._busy = self._stopped = self._cut = False
        self._sockets: list[socket.socket] = []  # duplicates of the sockets of the push in flight
        self._failures: list[str] = []
        self._thread = Thread(target=self._run, name=f"cxrstudy-push-seed-{seed}", daemon=True)
        self._thread.start()

    def request(self, when: str) -> None:
        with self._cond:
            if not self._stopped:
                self._wanted = when
                self._cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Wait (a signal interrupts it) until every push asked for has ended; False if `timeout` s passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._wanted is None and not self._busy, timeout)

    def stop(self) -> None:
        """Start no push again, and cut the one in flight."""
        with self._cond:
            self._stopped, self._wanted = True, None
            self._cond.notify_all()
        self._cut_sockets()

    def failures(self) -> list[str]:
        with self._cond:
            found, self._failures = self._failures, []
        return found

    def fail(self, message: str) -> None:
        self._failure_count.inc()
        with self._cond:
            self._failures.append(message)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted is not None or self._stopped)
                if self._stopped:
                    return
                when, self._wanted = self._wanted, None
                self._busy, self._cut = True, False
            error = self._push()
            with self._cond:
                for sock in self._sockets:
                    sock.close()
                self._sockets.clear()
                stopped = self._stopped
            if error is not None and not stopped:
                self.fail(f"({when}): {error}")
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _push(self) -> str | None:
        timer = threading.Timer(self.timeout, self._cut_sockets)
        timer.daemon = True
        timer.start()
        try:
            push_to_gateway(self.gateway, job=self._job, registry=self._registry, grouping_key={"seed": self._seed},
                            timeout=self.timeout, handler=self._handler)
        except Exception as err:  # monitoring must never stop the training run
            if self._cut:
                return f"no complete answer within {self.timeout:g} s (monitor.push_timeout_s); the push was cut"
            return f"{type(err).__name__}: {err}"
        finally:
            timer.cancel()
        return None

    def _cut_sockets(self) -> None:
        with self._cond:
            self._cut = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the push's blocked send or receive returns at once

    def _connect(self, address: tuple[str, int], timeout: float | None = None,
                 source_address: tuple[str, int] | None = None) -> socket.socket:
        sock = socket.create_connection(address, timeout, source_address)
        with self._cond:
            if self._cut or self._stopped:
                sock.close()
                raise ConnectionAbortedError("the push was cut")
            self._sockets.append(sock.dup())  # a duplicate still reaches the socket once TLS has taken it over
        return sock

    def _handler(self, url: str, method: str, timeout: float | None, headers: Sequence[tuple[str, str]],
                 data: bytes) -> Callable[[], None]:
        def handle() -> None:
            request = urllib.request.Request(url, data=data, method=method)
            for key, value in headers:
                request.add_header(key, value)
            opener = urllib.request.build_opener(_CuttableHTTP(self._connect), _CuttableHTTPS(self._connect))
            with opener.open(request, timeout=timeout) as response:  # an answer of 400 or more raises HTTPError
                response.read()

        return handle


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
        self._pusher: _Pusher | None = None
        if params.pushgateway is not None:
            self._pusher = _Pusher(params.pushgateway, params.job, self.registry, seed, params.push_timeout_s,
                                   self._counters["cxr_train_push_failures_total"])
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
        """Record the validation results of `epoch` and ask for a push, if a gateway is configured (returns at once;
        the failures of earlier pushes are reported here)."""
        self._set(cxr_train_epoch=epoch, cxr_val_loss=val_loss, cxr_val_auroc=val_auroc)
        if self._pusher is not None and not self._closed:
            self._report()
            self._pusher.request(f"end of epoch {epoch}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every push asked for has ended, at most `timeout` seconds (default: the push timeout), and
        report those that failed; False if one is still in flight."""
        if self._pusher is None:
            return True
        done = self._pusher.wait(self.params.push_timeout_s if timeout is None else timeout)
        self._report()
        return done

    def close(self) -> None:
        """Mark the run finished, push a last time (waiting at most `push_timeout_s`; a signal interrupts the wait)
        and stop the HTTP endpoint; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._set(cxr_train_finished=1)
        if self._pusher is not None:
            self._pusher.request("at close")
            try:
                if not self._pusher.wait(self.params.push_timeout_s):
                    self._pusher.fail(f"(at close): the last push did not end within {self.params.push_timeout_s:g} "
                                      "s (monitor.push_timeout_s); it was cut")
            finally:
                self._pusher.stop()
            self._report()
        self._stop_endpoint()

    def abort(self) -> None:
        """Push nothing more (the push in flight is cut, none is started) and stop the HTTP endpoint."""
        self._closed = True
        if self._pusher is not None:
            self._pusher.stop()
        self._stop_endpoint()

    def _report(self) -> None:
        assert self._pusher is not None
        for failure in self._pusher.failures():
            self._warn(f"push to Pushgateway {self._pusher.gateway} failed {failure} (monitoring only: training "
                       "neither waits for a push nor depends on it)")

    def _stop_endpoint(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._thread = None  # stopped (the port stays known)

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
            warnings.warn(message, MonitorWarning, stacklevel=3)
        except Warning:  # warnings made errors (-W error): still report it, but never stop the training run
            log.warning("%s", message)


def open_monitor(params: MonitorParams, *, seed: int, rank: int = 0) -> Monitor:
    """The monitor for one seed's training run: a `PrometheusMonitor` on rank 0 when an endpoint or a gateway is
    configured, otherwise a `NullMonitor`."""
    if rank != 0 or (params.port is None and params.pushgateway is None):
        return NullMonitor()
    return PrometheusMonitor(params, seed=seed)
