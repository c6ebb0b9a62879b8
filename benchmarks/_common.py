"""Helpers shared by the benchmark scripts: offline environment, medians, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "DO_NOT_TRACK": "1",
    "LANGFUSE_TRACING_ENVIRONMENT": "bench",
    "OTEL_SDK_DISABLED": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parent.parent


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def child_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: offline, repo on the path."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def python() -> str:
    return sys.executable


def rss_kb() -> int:
    """Current resident set size (Linux /proc), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    """What the figures were measured on, including how loaded the machine was."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg": [round(x, 2) for x in load]}


def run_json(args: list[str], timeout: float) -> Any:
    """Run a benchmark script in a fresh interpreter and parse its last stdout line as JSON."""
    import json

    done = subprocess.run([python(), *args], capture_output=True, text=True, env=child_env(),
                          timeout=timeout, cwd=str(ROOT), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
