"""Request and response bodies of the REST API (their names are the OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator


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
    behavior: str | None = Field(None, max_length=500, description=(
        "NWB recordings: the behaviour series to send as behaviour frames (one per bin), so "
        "the session can calibrate on it; `spikeloop inspect FILE` lists the series"))


class TrainIn(BaseModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
    source: str = Field(..., description="contdata95 | mc_maze_small | peyrache_hd, or the "
                                         "name of a recording (.splog or .nwb) listed by "
                                         "GET /recordings", min_length=1, max_length=1000)
    kind: Literal["snn", "gru", "lstm", "kalman", "wiener"] = "snn"
    epochs: int | None = Field(None, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**31)
    replace: bool = Field(False, description="Train over a stored model of this name")
    behavior: str | None = Field(None, max_length=500, pattern=r"^[^\x00-\x1f]+$",
                                 description="NWB source: the behaviour series to decode")
    bin_ms: float | None = Field(None, gt=0, le=1000, description="Bin width for a recording")
    interval: tuple[float, float] | None = Field(
        None, description="NWB source: only [start, stop) s of the file")
    split: Literal["time", "trials"] = Field("time", description="NWB source: test on the "
                                             "last 20 % by time or of the trials")

    @model_validator(mode="after")
    def _nwb_needs_behavior(self) -> TrainIn:
        if self.source.endswith(".nwb") and not self.behavior:
            raise ValueError("an NWB source needs `behavior`: the series to decode")
        if self.interval is not None and self.interval[1] <= self.interval[0]:
            raise ValueError("interval: stop must be after start")
        return self

    model_config = {"json_schema_extra": {"examples": [
        {"name": "monkey-snn", "source": "contdata95", "kind": "snn", "epochs": 60}]}}


class ArmOut(BaseModel):
    armed: bool
