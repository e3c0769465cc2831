"""Python client for the control plane (REST), over http or https.

Every call but ``/healthz`` needs a token (``read`` for reads). Over https the server's
certificate is checked against the system's CAs, or the CA file given (``ca_file``, or
``SPIKELOOP_CA_FILE`` for :func:`client_for`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import httpx

#: environment variables the CLI and :func:`client_for` read
TOKEN_ENV = "SPIKELOOP_TOKEN"
CA_ENV = "SPIKELOOP_CA_FILE"


class ControlError(RuntimeError):
    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class ControlClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str | None = None,
                 timeout: float = 90.0, ca_file: str | Path | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                 verify=tls_context(ca_file))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ControlError(r.status_code, detail)
        return r.json() if r.content else None

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def sessions(self) -> list[dict[str, Any]]:
        return self._call("GET", "/sessions")

    def create_session(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/sessions", json=config)

    def session(self, sid: str) -> dict[str, Any]:
        return self._call("GET", f"/sessions/{sid}")

    def start(self, sid: str) -> dict[str, Any]:
        return self._call("POST", f"/sessions/{sid}/start")

    def stop(self, sid: str) -> dict[str, Any]:
        return self._call("POST", f"/sessions/{sid}/stop")

    def delete(self, sid: str) -> None:
        self._call("DELETE", f"/sessions/{sid}")

    def arm(self, sid: str) -> dict[str, Any]:
        return self._call("POST", f"/sessions/{sid}/arm")

    def disarm(self, sid: str) -> dict[str, Any]:
        return self._call("POST", f"/sessions/{sid}/disarm")

    def limits(self, sid: str) -> dict[str, Any]:
        return self._call("GET", f"/sessions/{sid}/limits")

    def set_limits(self, sid: str, limits: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", f"/sessions/{sid}/limits", json=limits)

    def adapt(self, sid: str, enabled: bool = True) -> dict[str, Any]:
        return self._call("POST", f"/sessions/{sid}/adapt", json={"enabled": enabled})

    def swap_model(self, sid: str, name: str) -> dict[str, Any]:
        return self._call("POST", f"/sessions/{sid}/model", json={"name": name})

    def metrics(self, sid: str) -> dict[str, Any]:
        return self._call("GET", f"/sessions/{sid}/metrics")

    def prometheus(self) -> str:
        r = self.http.get("/metrics")
        r.raise_for_status()
        return r.text


def tls_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Certificate checks against ``ca_file`` (PEM) when given, else the system's CAs."""
    if ca_file is not None and not Path(ca_file).is_file():
        raise ValueError(f"CA file {ca_file} does not exist: give the PEM certificate of the "
                         "CA that signed the control plane's certificate")
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def client_for(api: str, data_dir: Path, token: str | None = None) -> ControlClient:
    """A client with the token from ``token``, ``SPIKELOOP_TOKEN`` or the admin token file in
    ``data_dir``, and the CA file in ``SPIKELOOP_CA_FILE`` (the CLI's ``--ca-file``)."""
    from service.api.auth import read_admin_token

    return ControlClient(api, token or os.environ.get(TOKEN_ENV) or read_admin_token(data_dir),
                         ca_file=os.environ.get(CA_ENV) or None)
