"""Decoder training and the model store (``service.api.models.ModelJobs`` does the work)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from service.api.deps import ModelsDep, require
from service.api.schemas import TrainIn

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(models: ModelsDep) -> list[dict[str, Any]]:
    """Stored decoders (by name, usable as a session's ``decoder.model``) and jobs."""
    return models.list()


@router.get("/models/{name}")
def get_model(name: str, models: ModelsDep) -> dict[str, Any]:
    try:
        return models.get(name)
    except (KeyError, ValueError):
        raise HTTPException(404, f"no model {name!r}; GET /models lists them") from None


@router.post("/models", status_code=202, dependencies=[require("control")])
def train_model(body: TrainIn, models: ModelsDep) -> dict[str, Any]:
    """Train a decoder in a separate process; poll GET /models/{name} for progress."""
    try:
        return models.train(body.name, body.source, body.kind, body.epochs, body.seed,
                            body.replace, body.model_dump(include={"behavior", "bin_ms",
                                                                   "interval", "split"}))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    except RuntimeError as exc:
        raise HTTPException(409, str(exc)) from None


@router.delete("/models/{name}/job", dependencies=[require("control")])
def cancel_training(name: str, models: ModelsDep) -> dict[str, Any]:
    """Cancel a running training job."""
    try:
        return models.cancel(name)
    except KeyError as exc:
        raise HTTPException(404, f"{exc.args[0]}; GET /models lists the jobs") from None


@router.delete("/models/{name}", status_code=204, dependencies=[require("control")])
def delete_model(name: str, models: ModelsDep) -> Response:
    try:
        models.delete(name)
    except (KeyError, ValueError):
        raise HTTPException(404, f"no model {name!r}; GET /models lists them") from None
    return Response(status_code=204)
