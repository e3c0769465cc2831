"""The model store as the control plane sees it: stored models plus training jobs.

Training runs as ``spikeloop train`` in its own process (minutes of CPU must
not share the API's interpreter); its progress bar goes to a log whose tail
the API reports while the job runs.
"""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path
from typing import Any

from decoders.store import ModelStore
from service.recording.storage import resolve_recording
from sources.datasets import DATASETS


class ModelJobs:
    def __init__(self, models_dir: Path, run_dir: Path, data_dir: Path, recordings_dir: Path,
                 max_jobs: int = 2):
        self.max_jobs = max_jobs  # each job takes a core for minutes: bounded
        self.store = ModelStore(models_dir)
        self.recordings_dir = recordings_dir
        self.run_dir = run_dir
        self.data_dir = data_dir
        self._jobs: dict[str, subprocess.Popen] = {}

    def list(self) -> list[dict[str, Any]]:
        stored = {m["name"]: m | {"state": "ready"} for m in self.store.list()}
        for name in list(self._jobs):
            if name not in stored or self._jobs[name].poll() is None:
                stored[name] = self.job(name)
        return sorted(stored.values(), key=lambda m: m["name"])

    def get(self, name: str) -> dict[str, Any]:
        if name in self._jobs and self._jobs[name].poll() is None:
            return self.job(name)
        try:
            return self.store.meta(name) | {"name": name, "state": "ready"}
        except KeyError:
            if name in self._jobs:
                return self.job(name)
            raise

    def job(self, name: str) -> dict[str, Any]:
        proc = self._jobs[name]
        code = proc.poll()
        state = "training" if code is None else ("ready" if code == 0 else "failed")
        return {"name": name, "state": state, "exit_code": code, "log": self._tail(name)}

    def _log(self, name: str) -> Path:
        return self.run_dir / f"train-{name}.log"

    def _tail(self, name: str, n: int = 600) -> str:
        try:
            text = self._log(name).read_text(errors="replace")
        except OSError:
            return ""
        return text[-n:].replace("\r", "\n")

    def running(self) -> builtins.list[str]:
        return [n for n, p in self._jobs.items() if p.poll() is None]

    def train(self, name: str, source: str, kind: str, epochs: int | None,
              seed: int, replace: bool = False, nwb: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """``source``: a shared dataset name, or the name of a recording in the store
        (a session log, or an NWB file with ``nwb`` = behavior, bin_ms, interval, split).

        Only those two: a REST caller must not make the server read arbitrary files.
        A stored model is replaced only when asked (``replace``).
        """
        self.store._path(name)  # validates the name (ValueError)
        if not replace and (self.store.root / f"{name}.json").exists():
            raise RuntimeError(f"model {name!r} exists; pass replace=true to train over it, "
                               "or pick another name")
        if len(self.running()) >= self.max_jobs:
            raise RuntimeError(f"{self.max_jobs} training jobs are running ({self.running()}); "
                               "wait for one, or cancel one: DELETE /models/NAME/job")
        if source not in DATASETS:
            try:
                source = str(resolve_recording(self.recordings_dir, source))
            except (FileNotFoundError, ValueError):
                raise ValueError(f"source {source!r} is neither a dataset ({', '.join(DATASETS)})"
                                 " nor a recording listed by GET /recordings") from None
        if name in self._jobs and self._jobs[name].poll() is None:
            raise RuntimeError(f"model {name!r} is already being trained")
        cmd = [sys.executable, "-m", "clients.cli", "train", source, "--name", name, "--kind",
               kind, "--seed", str(seed), "--data-dir", str(self.data_dir)]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        for key, value in (nwb or {}).items():
            if value is not None:
                text = ":".join(str(v) for v in value) if key == "interval" else str(value)
                cmd += [f"--{key.replace('_', '-')}", text]
        if replace:
            cmd += ["--replace"]
        with open(self._log(name), "wb") as log:
            self._jobs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True,
                                                cwd=Path(__file__).resolve().parents[2])
        return self.job(name)

    def cancel(self, name: str) -> dict[str, Any]:
        """Stop a running training job (the store keeps whatever model it had)."""
        proc = self._jobs.get(name)
        if proc is None or proc.poll() is not None:
            raise KeyError(f"no training job {name!r} is running")
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return self.job(name) | {"state": "cancelled"}

    def delete(self, name: str) -> None:
        self.store.meta(name)  # KeyError if absent
        self.store.delete(name)

    def stop_all(self) -> None:
        for proc in self._jobs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
