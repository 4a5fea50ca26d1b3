"""Tests for `cxrstudy.learning.monitoring`: the metrics endpoint, pushes to a real Pushgateway, failure handling
(a refusing, a silent and a slow gateway), params.

The Pushgateway tests need Debian's ``prometheus-pushgateway`` binary (installed by .ci/run); without it, they skip
and say so. Everything binds to 127.0.0.1 on free ports and finishes in a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from cxrstudy.learning.monitoring import (
    METRIC_NAMES,
    MonitorWarning,
    NullMonitor,
    PrometheusMonitor,
    open_monitor,
)
from tests.conftest import section

MONITORING_DIR = Path(__file__).resolve().parents[1] / "monitoring"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8"))


def _samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, its labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _exposition(monitor: PrometheusMonitor) -> str:
    return generate_latest(monitor.registry).decode("utf-8")


def _value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k[0] for k in samples)}"
    return samples[key]


def _run_steps(monitor: PrometheusMonitor | NullMonitor, epoch: int, n: int, batch: int, start_step: int) -> None:
    for i in range(n):
        monitor.step(
            epoch=epoch,
            step=start_step + i,
            loss=1.0 / (start_step + i + 1),
            images=batch,
            seconds=0.02,
            lr=1e-3 * (i + 1),
        )


# -- params ----------------------------------------------------------------------------------------------------------


def test_params_defaults_are_off_and_loopback() -> None:
    params = section("monitor")
    assert params.port is None and params.pushgateway is None
    assert params.bind == "127.0.0.1"
    assert params.job == "cxrstudy_train"
    assert isinstance(open_monitor(params, seed=1), NullMonitor)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:9091", "http://127.0.0.1:9091"),
        ("localhost:9091", "http://localhost:9091"),
        ("http://pgw.example.org:9091/", "http://pgw.example.org:9091"),
        ("https://pgw.example.org", "https://pgw.example.org"),
        ("[::1]:9091", "http://[::1]:9091"),
    ],
)
def test_params_normalise_gateway(given: str, expected: str) -> None:
    assert section("monitor", pushgateway=given).pushgateway == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"port": -1},
        {"port": 65536},
        {"port": True},
        {"bind": "not a host!"},
        {"bind": ""},
        {"pushgateway": ""},
        {"pushgateway": "ftp://pgw:9091"},
        {"pushgateway": "pgw:notaport"},
        {"pushgateway": "pgw:9091/metrics"},
        {"job": "two words"},
        {"job": ""},
        {"push_timeout_s": 0},
        {"push_timeout_s": 1000},
        {"prot": 9400},
    ],
)
def test_params_reject(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        section("monitor", **bad)


def test_params_frozen() -> None:
    params = section("monitor", port=0)
    with pytest.raises(ValidationError):
        params.port = 1


# -- which monitor ---------------------------------------------------------------------------------------------------


def test_rank_other_than_zero_gets_null_monitor() -> None:
    params = section("monitor", port=0, pushgateway="127.0.0.1:1")
    for rank in (1, 3):
        monitor = open_monitor(params, seed=12, rank=rank)
        assert isinstance(monitor, NullMonitor)
        monitor.step(epoch=0, step=0, loss=1.0, images=8, seconds=0.1, lr=0.1)
        monitor.epoch_end(epoch=0, val_loss=1.0, val_auroc=0.5)
        monitor.close()


def test_rank_zero_gets_prometheus_monitor() -> None:
    monitor = open_monitor(section("monitor", port=0), seed=12, rank=0)
    try:
        assert isinstance(monitor, PrometheusMonitor)
        assert monitor.port is not None and monitor.port > 0
    finally:
        monitor.close()


# -- HTTP endpoint ---------------------------------------------------------------------------------------------------


def test_endpoint_serves_progress_during_a_short_run() -> None:
    monitor = open_monitor(section("monitor", port=0), seed=42)
    assert isinstance(monitor, PrometheusMonitor)
    try:
        assert monitor.url == f"http://127.0.0.1:{monitor.port}/metrics", "binds loopback unless configured otherwise"

        _run_steps(monitor, epoch=0, n=5, batch=16, start_step=0)
        mid = _samples(_get(f"http://127.0.0.1:{monitor.port}/metrics"))  # scraped mid-epoch
        assert _value(mid, "cxr_train_steps_total", seed="42") == 5
        assert _value(mid, "cxr_train_step", seed="42") == 4
        assert _value(mid, "cxr_train_finished", seed="42") == 0

        monitor.epoch_end(epoch=0, val_loss=0.61, val_auroc=0.73)
        monitor.step(epoch=1, step=5, loss=0.25, images=8, seconds=0.04, lr=5e-4)
        text = _get(f"http://127.0.0.1:{monitor.port}/metrics")
    finally:
        monitor.close()

    samples = _samples(text)
    assert _value(samples, "cxr_train_epoch", seed="42") == 1
    assert _value(samples, "cxr_train_step", seed="42") == 5
    assert _value(samples, "cxr_train_steps_total", seed="42") == 6
    assert _value(samples, "cxr_train_images_total", seed="42") == 5 * 16 + 8
    assert _value(samples, "cxr_train_loss", seed="42") == pytest.approx(0.25)
    assert _value(samples, "cxr_train_learning_rate", seed="42") == pytest.approx(5e-4)
    # Throughput restarts with each epoch: epoch 1 so far is one step of 8 images in 0.04 s.
    assert _value(samples, "cxr_train_images_per_second", seed="42") == pytest.approx(200.0)
    assert _value(samples, "cxr_val_loss", seed="42") == pytest.approx(0.61)
    assert _value(samples, "cxr_val_auroc", seed="42") == pytest.approx(0.73)
    assert _value(samples, "cxr_train_step_seconds_count", seed="42") == 6
    assert _value(samples, "cxr_train_step_seconds_sum", seed="42") == pytest.approx(5 * 0.02 + 0.04)
    assert _value(samples, "cxr_train_step_seconds_bucket", seed="42", le="0.025") == 5
    assert _value(samples, "cxr_train_step_seconds_bucket", seed="42", le="+Inf") == 6
    assert _value(samples, "cxr_train_push_failures_total", seed="42") == 0
    assert _value(samples, "cxr_train_last_update_timestamp_seconds", seed="42") > 0

    # Prometheus naming and types; every series labelled by seed; nothing from the global registry.
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["cxr_train_steps"] == "counter"
    assert families["cxr_train_images"] == "counter"
    assert families["cxr_train_step_seconds"] == "histogram"
    assert families["cxr_train_loss"] == "gauge"
    names = {name for name, _ in samples}
    assert not any(n.startswith(("python_", "process_")) for n in names)
    for name, labels in samples:
        assert ("seed", "42") in labels, name


def test_metric_names_constant_matches_export() -> None:
    monitor = PrometheusMonitor(section("monitor"), seed=0)
    _run_steps(monitor, epoch=0, n=1, batch=4, start_step=0)
    monitor.close()
    exported = {
        s.name
        for family in text_string_to_metric_families(_exposition(monitor))
        for s in family.samples
        if not s.name.endswith("_created")
    }
    histogram_suffixes = ("_bucket", "_count", "_sum")
    expected = {n for n in METRIC_NAMES if n != "cxr_train_step_seconds"}
    expected |= {f"cxr_train_step_seconds{suffix}" for suffix in histogram_suffixes}
    assert exported == expected


def test_two_monitors_do_not_collide_and_close_stops_endpoint() -> None:
    a = PrometheusMonitor(section("monitor", port=0), seed=1)
    b = PrometheusMonitor(section("monitor", port=0), seed=2)
    try:
        a.step(epoch=0, step=0, loss=0.5, images=4, seconds=0.01, lr=0.1)
        samples_b = _samples(_get(f"http://127.0.0.1:{b.port}/metrics"))
        assert _value(samples_b, "cxr_train_steps_total", seed="2") == 0
        assert not any(("seed", "1") in labels for _, labels in samples_b)
    finally:
        a.close()
        b.close()
    port = a.port
    a.close()  # idempotent
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)


def test_port_in_use_warns_and_training_continues() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.warns(MonitorWarning, match="cannot serve metrics"):
            monitor = open_monitor(section("monitor", port=port), seed=5)
        assert isinstance(monitor, PrometheusMonitor)
        assert monitor.port is None
        monitor.step(epoch=0, step=0, loss=0.5, images=4, seconds=0.01, lr=0.1)
        monitor.close()


# -- pushes that fail ------------------------------------------------------------------------------------------------


class SlowGateway:
    """A loopback server posing as a Pushgateway: it reads each push, then answers one byte every `interval` seconds
    (None: never answers). `pushes` counts the connections; `unanswered` those whose client went away before the
    answer was complete. Stopped by `close`."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, interval: float | None, on_push: Callable[[], None] = lambda: None) -> None:
        self.interval, self.on_push = interval, on_push
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.pushes = self.unanswered = 0
        self.pushed = threading.Event()  # a whole request has arrived
        self.cut = threading.Event()  # a client went away before its answer was complete
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.pushes += 1
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536) or b"\r\n\r\n"
                self.pushed.set()
                self.on_push()
                if self.interval is None:
                    while not self._stop.is_set() and conn.recv(65536):
                        pass  # until the client goes away
                    self._gone()
                    return
                for byte in self.ANSWER:
                    if self._stop.wait(self.interval):
                        return
                    conn.setblocking(False)
                    try:
                        if conn.recv(1, socket.MSG_PEEK) == b"":  # the client went away
                            self._gone()
                            return
                    except BlockingIOError:
                        pass
                    conn.setblocking(True)
                    conn.sendall(bytes([byte]))
            except OSError:
                self._gone()

    def _gone(self) -> None:
        self.unanswered += 1
        self.cut.set()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (closing alone does not)
        self.server.close()
        for thread in self._threads:
            thread.join(timeout=10)


@pytest.fixture
def silent_gateway() -> Iterator[SlowGateway]:
    """A gateway that takes every push and never answers."""
    gateway = SlowGateway(None)
    yield gateway
    gateway.close()


@pytest.fixture
def dripping_gateway() -> Iterator[SlowGateway]:
    """A gateway that answers one byte every 2 s: a timeout per receive (prometheus_client's) never fires."""
    gateway = SlowGateway(2.0)
    yield gateway
    gateway.close()


def test_push_to_refusing_gateway_warns_and_does_not_raise() -> None:
    gateway = f"127.0.0.1:{_free_port()}"  # nothing listens there: connection refused
    monitor = open_monitor(section("monitor", pushgateway=gateway, push_timeout_s=1.0), seed=3)
    assert isinstance(monitor, PrometheusMonitor)
    assert monitor.port is None  # a gateway alone serves no endpoint
    monitor.step(epoch=0, step=0, loss=0.5, images=4, seconds=0.01, lr=0.1)
    monitor.epoch_end(epoch=0, val_loss=0.5, val_auroc=0.6)
    with pytest.warns(MonitorWarning, match=r"push to Pushgateway http://127\.0\.0\.1:\d+ failed \(end of epoch 0\)"):
        assert monitor.flush()
    with pytest.warns(MonitorWarning, match="at close"):
        monitor.close()
    assert monitor.registry.get_sample_value("cxr_train_push_failures_total", {"seed": "3"}) == 2


def test_push_failure_never_raises_even_with_warnings_as_errors(caplog: pytest.LogCaptureFixture) -> None:
    monitor = PrometheusMonitor(section("monitor", pushgateway=f"127.0.0.1:{_free_port()}"), seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.epoch_end(epoch=0, val_loss=0.5, val_auroc=0.6)
        monitor.flush()
        monitor.close()
    assert sum("push to Pushgateway" in r.getMessage() for r in caplog.records) == 2


def test_a_push_failure_never_says_that_training_continues(silent_gateway: SlowGateway) -> None:
    """At close, or after a signal, training does not continue: the warning used to say it did."""
    monitor = PrometheusMonitor(section("monitor", pushgateway=silent_gateway.address, push_timeout_s=0.5), seed=7)
    with pytest.warns(MonitorWarning) as caught:
        monitor.close()
    assert "(at close)" in str(caught[0].message) and "training continues" not in str(caught[0].message)


def test_push_to_silent_gateway_is_cut_at_push_timeout_s_with_a_warning(silent_gateway: SlowGateway) -> None:
    monitor = PrometheusMonitor(section("monitor", pushgateway=silent_gateway.address, push_timeout_s=0.3), seed=4)
    monitor.epoch_end(epoch=0, val_loss=0.5, val_auroc=0.6)
    with pytest.warns(MonitorWarning, match=r"failed \(end of epoch 0\): no complete answer within 0\.3 s"):
        assert monitor.flush(timeout=30)
    with pytest.warns(MonitorWarning, match=r"\(at close\)"):
        monitor.close()


def test_a_push_never_holds_the_training_loop(dripping_gateway: SlowGateway) -> None:
    """`epoch_end` used to push in the training loop: a slow gateway held training for as long as it liked."""
    params = section("monitor", pushgateway=dripping_gateway.address, push_timeout_s=60.0)
    monitor = PrometheusMonitor(params, seed=8)
    try:
        monitor.epoch_end(epoch=1, val_loss=0.5, val_auroc=0.6)  # returns while the push is in flight

        assert dripping_gateway.pushed.wait(timeout=30), "the push never arrived"
        assert not monitor.flush(timeout=0), "the push ended: the gateway answers one byte every 2 s"
        monitor.epoch_end(epoch=2, val_loss=0.4, val_auroc=0.7)  # waits behind it; training does not
        assert dripping_gateway.pushes == 1
    finally:
        monitor.abort()


def test_a_gateway_answering_one_byte_every_2_s_is_cut_at_push_timeout_s(dripping_gateway: SlowGateway) -> None:
    """The timeout used to apply to each receive: 2 s apart, the 38 bytes of an answer took 76 s, and a longer
    answer longer still. Now the whole push gets push_timeout_s, then its connection is cut."""
    monitor = PrometheusMonitor(section("monitor", pushgateway=dripping_gateway.address, push_timeout_s=3.0), seed=9)
    monitor.epoch_end(epoch=1, val_loss=0.5, val_auroc=0.6)

    with pytest.warns(MonitorWarning, match=r"\(end of epoch 1\): no complete answer within 3 s"):
        ended = monitor.flush(timeout=30)  # per receive, the push would last 76 s

    assert ended
    assert dripping_gateway.cut.wait(timeout=10), "the push was not cut before its answer was complete"
    monitor.abort()


# -- a real Pushgateway ----------------------------------------------------------------------------------------------


def _pushgateway_binary() -> str | None:
    return shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A Pushgateway on 127.0.0.1 with a temporary persistence file; yields its base URL; always terminated."""
    binary = _pushgateway_binary()
    if binary is None:
        pytest.skip(
            "prometheus-pushgateway not installed (Debian: apt-get install -y prometheus-pushgateway; .ci/run does)"
        )
    last_log = ""
    for attempt in range(3):
        port = _free_port()
        log_path = tmp_path / f"pushgateway-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--persistence.file={tmp_path / 'pushgateway.data'}",
                    "--persistence.interval=1s",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    _get(f"{url}/-/ready", timeout=0.5)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.05)
            else:
                last_log = log_path.read_text(errors="replace")
                continue  # exited (port taken meanwhile?) or never ready: try another port
            yield url
            return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    pytest.fail(f"Pushgateway did not become ready on 127.0.0.1 after 3 tries; last log:\n{last_log}")


@pytest.mark.tools("prometheus-pushgateway|pushgateway")
def test_pushes_reach_a_real_pushgateway(pushgateway: str) -> None:
    params = section("monitor", pushgateway=pushgateway, job="cxrstudy_test", push_timeout_s=2.0)
    for seed in (12, 22):
        monitor = open_monitor(params, seed=seed)
        assert isinstance(monitor, PrometheusMonitor)
        _run_steps(monitor, epoch=0, n=3, batch=8, start_step=0)
        monitor.epoch_end(epoch=0, val_loss=0.7, val_auroc=0.6 + seed / 1000)
        assert monitor.flush()

        after_epoch = _samples(_get(f"{pushgateway}/metrics"))
        labels = {"job": "cxrstudy_test", "seed": str(seed), "instance": ""}
        assert _value(after_epoch, "cxr_train_steps_total", **labels) == 3
        assert _value(after_epoch, "cxr_train_finished", **labels) == 0

        _run_steps(monitor, epoch=1, n=2, batch=8, start_step=3)
        monitor.epoch_end(epoch=1, val_loss=0.5, val_auroc=0.7 + seed / 1000)
        monitor.close()

    samples = _samples(_get(f"{pushgateway}/metrics"))
    for seed in (12, 22):
        labels = {"job": "cxrstudy_test", "seed": str(seed), "instance": ""}
        assert _value(samples, "cxr_train_epoch", **labels) == 1
        assert _value(samples, "cxr_train_step", **labels) == 4
        assert _value(samples, "cxr_train_steps_total", **labels) == 5
        assert _value(samples, "cxr_train_images_total", **labels) == 40
        assert _value(samples, "cxr_train_loss", **labels) == pytest.approx(1.0 / 5)
        assert _value(samples, "cxr_train_learning_rate", **labels) == pytest.approx(2e-3)
        assert _value(samples, "cxr_train_images_per_second", **labels) == pytest.approx(400.0)
        assert _value(samples, "cxr_val_loss", **labels) == pytest.approx(0.5)
        assert _value(samples, "cxr_val_auroc", **labels) == pytest.approx(0.7 + seed / 1000)
        assert _value(samples, "cxr_train_step_seconds_count", **labels) == 5
        assert _value(samples, "cxr_train_finished", **labels) == 1
        assert _value(samples, "cxr_train_push_failures_total", **labels) == 0
        assert _value(samples, "push_time_seconds", **labels) > 0  # the gateway's own record of the push


def test_after_abort_nothing_more_reaches_a_real_pushgateway(pushgateway: str) -> None:
    """A run that fails or is interrupted pushes nothing more: neither the epoch it was in nor a last push."""
    monitor = PrometheusMonitor(section("monitor", pushgateway=pushgateway, push_timeout_s=2.0), seed=32)
    _run_steps(monitor, epoch=1, n=3, batch=8, start_step=0)
    monitor.epoch_end(epoch=1, val_loss=0.7, val_auroc=0.6)
    assert monitor.flush()
    labels = {"job": "cxrstudy_train", "seed": "32", "instance": ""}
    before = _samples(_get(f"{pushgateway}/metrics"))
    assert _value(before, "cxr_train_steps_total", **labels) == 3

    monitor.abort()
    _run_steps(monitor, epoch=2, n=2, batch=8, start_step=3)
    monitor.epoch_end(epoch=2, val_loss=0.5, val_auroc=0.7)
    monitor.close()

    after = _samples(_get(f"{pushgateway}/metrics"))
    assert _value(after, "cxr_train_steps_total", **labels) == 3
    assert _value(after, "cxr_train_finished", **labels) == 0
    assert _value(after, "push_time_seconds", **labels) == _value(before, "push_time_seconds", **labels)


# -- monitoring/ stack -----------------------------------------------------------------------------------------------


def test_monitoring_stack_files_parse_and_match_the_metrics() -> None:
    compose = yaml.safe_load((MONITORING_DIR / "compose.yaml").read_text())
    for service in ("prometheus", "pushgateway", "grafana"):
        image = compose["services"][service]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{service} image tag must be pinned: {image}"

    prometheus = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True

    yaml.safe_load((MONITORING_DIR / "grafana/provisioning/datasources/prometheus.yml").read_text())
    yaml.safe_load((MONITORING_DIR / "grafana/provisioning/dashboards/cxrstudy.yml").read_text())
    dashboard = json.loads((MONITORING_DIR / "grafana/dashboards/cxrstudy-training.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bcxr_[a-z_]+", expr)}
    exported = set(METRIC_NAMES) | {f"cxr_train_step_seconds{s}" for s in ("_bucket", "_count", "_sum")}
    assert used, "the dashboard queries no cxr_ metrics"
    assert used <= exported, f"dashboard queries unknown metrics: {sorted(used - exported)}"
    assert {"cxr_train_loss", "cxr_train_images_per_second", "cxr_train_learning_rate", "cxr_val_auroc"} <= used
