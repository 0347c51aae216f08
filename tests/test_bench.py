"""Smoke test of the load benchmark, bench/load.py, against the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "load.py")
#: The run itself takes well under a second; this bounds a hung one.
RUN_TIMEOUT_S = 60


def test_tiny_fanout_run_delivers_every_line_once_in_order(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, BENCH, "-n", "5", "-s", "2", "-m", "20",
         "--workers", "2", "--timeout", "20", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    assert done.returncode == 0, done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True
    (run,) = result["runs"]
    assert run["complete"], run["errors"]
    assert (run["n"], run["s"], run["m"]) == (5, 2, 20)
    assert run["registered"] == 5
    assert run["expected"] == run["delivered"] == 2 * 20 * 4
    assert run["lost"] == run["duplicated"] == run["reordered"] == 0
    assert run["malformed"] == run["echoed"] == 0
    assert run["latency_ms"]["p50"] is not None
    assert run["deliveries_per_s"] > 0
    assert len(run["generator"]["busy"]) == 2
    # The bench stopped the server it started.
    assert not os.path.exists(f"/proc/{run['server']['pid']}")


def test_tiny_churn_run_drops_and_joins_and_loses_no_probe_line(tmp_path):
    out = tmp_path / "churn.json"
    done = subprocess.run(
        [sys.executable, BENCH, "--churn", "4", "-n", "8", "--workers", "2",
         "--hold", "0", "--timeout", "30", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    assert done.returncode == 0, done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True
    (run,) = result["runs"]
    assert run["complete"], run["errors"]
    assert (run["n"], run["k"], run["drop_mode"]) == (8, 4, "rst")
    assert run["registered"] == 8
    assert run["dropped"] == run["joined"] == 4
    assert run["still_connected"] == 8
    assert run["probe_sent"] > 0 and run["lost"] == 0
    # The server's threads went down by the 4 dropped and back up.
    assert run["threads_after_drop"] <= run["threads_before"] - 4
    assert run["threads_after_join"] >= run["threads_before"]
    assert run["probe_drop_ms"]["max"] is not None
    assert not os.path.exists(f"/proc/{run['server']['pid']}")
