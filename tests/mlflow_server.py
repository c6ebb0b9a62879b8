"""A real ``mlflow server`` for the tests: sqlite backend store, an artifacts folder, loopback,
a free port, one worker. Started once per test session by the ``mlflow_server`` fixture."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from servers import ServerProcess  # tests/ is on sys.path (rootdir conftest)

SERVER_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else startup hangs fetching litellm's price map
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "DO_NOT_TRACK": "1",
}


class MlflowServer(ServerProcess):
    """``with MlflowServer(folder) as server: server.url``; stops the process group by its pid."""

    name = "mlflow server"

    def start(self, timeout: float = 60.0) -> MlflowServer:
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [
            str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        env = {**os.environ, **SERVER_ENV}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.launch(command, env, timeout)
        return self
