"""Model store: named model files (weights + JSON metadata) the service loads by name.

A model ``NAME`` is two files in the store root: ``NAME.npz`` (weights) and
``NAME.json`` (metadata: type, bin width, channels, output names, hash of the
training data, metrics, ...). Names are plain file names, so a store is just a
folder that can be copied between machines.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from .base import Decoder

# No '.': model files are <name>.json/.npz and Path.with_suffix would cut a dotted name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class ModelStore:
    """A folder of saved decoders, addressed by name."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '-'")
        return self.root / name

    def save(self, name: str, decoder: Decoder, meta: dict[str, Any] | None = None) -> Path:
        """Write (or replace) model ``name``; returns the metadata file's path."""
        extra = {"name": name, "saved_unix": time.time(), "channels": decoder.n_inputs}
        return decoder.save(self._path(name), extra_meta=extra | (meta or {}))

    def load(self, name: str) -> Decoder:
        path = self._path(name)
        if not path.with_suffix(".json").exists():
            raise KeyError(f"no model {name!r} in {self.root}")
        return Decoder.load(path)

    def meta(self, name: str) -> dict[str, Any]:
        path = self._path(name).with_suffix(".json")
        if not path.exists():
            raise KeyError(f"no model {name!r} in {self.root}")
        return json.loads(path.read_text())

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every model, sorted by name."""
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.glob("*.json")):
            if p.with_suffix(".npz").exists():
                out.append(json.loads(p.read_text()) | {"name": p.stem})
        return out

    def delete(self, name: str) -> None:
        path = self._path(name)
        for suffix in (".json", ".npz"):
            path.with_suffix(suffix).unlink(missing_ok=True)
