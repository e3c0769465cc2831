"""Request and response bodies of the REST API (their names are the OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class SessionOut(BaseModel):
    id: str
    name: str
    state: str = Field(description="created | starting | calibrating | running | stopped | failed")
    error: str
    pid: int | None
    created_at: float
    updated_at: float
    config: dict[str, Any]
    output_endpoint: str | None
    recording: str | None
    worker: str | None = Field(None, description="The worker running it (None: this host)")
    live: dict[str, Any] | None = Field(None, description="Status from the running process")


class AdaptIn(BaseModel):
    enabled: bool = True


class ModelIn(BaseModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$",
                      description="A stored model (GET /models)")


class ReplayIn(BaseModel):
    speed: float | None = Field(1.0, gt=0, le=10_000,
                                description="x real time; null = as fast as possible")
    session: dict[str, Any] | None = Field(None, description="Session config overrides")


class TrainIn(BaseModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
    source: str = Field(..., description="contdata95 | mc_maze_small | peyrache_hd, or the "
                                         "path of a .splog recording", min_length=1,
                        max_length=1000)
    kind: Literal["snn", "gru", "lstm", "kalman", "wiener"] = "snn"
    epochs: int | None = Field(None, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**31)
    replace: bool = Field(False, description="Train over a stored model of this name")

    model_config = {"json_schema_extra": {"examples": [
        {"name": "monkey-snn", "source": "contdata95", "kind": "snn", "epochs": 60}]}}


class ArmOut(BaseModel):
    armed: bool
