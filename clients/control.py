"""Python client for the control plane (REST)."""

from __future__ import annotations

from typing import Any

import httpx


class ControlError(RuntimeError):
    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class ControlClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str | None = None,
                 timeout: float = 90.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

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
