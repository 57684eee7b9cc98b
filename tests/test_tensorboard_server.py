"""A real TensorBoard server on a short run serves the run, its scalars, histograms and custom-scalars layout."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

RUN = "."  # the logdir is the run directory itself, whose event files sit at its top


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for(url: str, ready: Callable[[Any], bool], timeout: float = 90) -> Any:
    """The JSON at ``url`` once ``ready`` accepts it (TensorBoard loads event files in the
    background), or the last answer when ``timeout`` runs out."""
    deadline, answer = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            answer = get(url)
            if ready(answer):
                break
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet
        time.sleep(0.25)
    return answer


@pytest.fixture(scope="module")
def server(default_run, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """TensorBoard on a 30-step run of the default config; stopped by its pid afterwards."""
    _, run_dir = default_run
    root = tmp_path_factory.mktemp("tensorboard")

    port = free_port()
    tensorboard = Path(sysconfig.get_path("scripts")) / "tensorboard"
    cmd = [str(tensorboard), "--logdir", str(run_dir), "--host", "127.0.0.1", "--port", str(port)]
    with (root / "tensorboard.log").open("w") as log:
        tb = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/data"
    try:
        yield base, tb
    finally:
        tb.send_signal(signal.SIGTERM)
        tb.wait(timeout=30)
        with socket.socket() as s:  # nothing listens there any more
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_run_and_training_scalars_are_served(server):
    base, tb = server
    tags = wait_for(f"{base}/plugin/scalars/tags", lambda t: "test/acc" in t.get(RUN, {}))
    assert tb.poll() is None, "tensorboard exited"
    assert get(f"{base}/runs") == [RUN]
    served = set(tags[RUN])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc"} <= served
    assert any(re.fullmatch(r"act/.+/p50", t) for t in served), sorted(served)
    plugins = get(f"{base}/plugins_listing")
    assert all(plugins[p]["enabled"] for p in ("scalars", "histograms", "custom_scalars"))


def test_activation_histograms_are_served(server):
    base, _ = server
    tags = wait_for(f"{base}/plugin/histograms/tags", lambda t: bool(t.get(RUN)))
    names = set(tags.get(RUN, {}))
    assert names and all(t.startswith("act/") for t in names), sorted(names)
    scalars = set(get(f"{base}/plugin/scalars/tags")[RUN])
    assert {f"{t}/p50" for t in names} <= scalars  # each histogram has its percentile curves


def test_custom_scalars_layout_refers_to_served_tags(server):
    base, _ = server
    layout = wait_for(f"{base}/plugin/custom_scalars/layout", lambda lay: bool(lay.get("category")))
    charts = [chart for category in layout.get("category", []) for chart in category["chart"]]
    assert charts, layout
    served = set(wait_for(f"{base}/plugin/scalars/tags", lambda t: "test/acc" in t.get(RUN, {}))[RUN])
    bands = [s for c in charts for s in c.get("margin", {}).get("series", [])]
    assert bands and all({s["value"], s["lower"], s["upper"]} <= served for s in bands)
    patterns = [p for c in charts for p in c.get("multiline", {}).get("tag", [])]
    assert any(re.search(p, t) for p in patterns for t in served), patterns
