"""The decoder interface every decoder implements.

A decoder turns one bin of spike counts into one decoded vector, keeping its
state between bins (``step``). The same model run over a whole recording
(``predict``) must give the same numbers as stepping it bin by bin, so offline
evaluation tells the truth about online behaviour.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

log = logging.getLogger(__name__)


class Decoder(ABC):
    """Stateful, bin-by-bin decoder.

    Attributes set by ``fit`` (or ``load``): ``n_inputs``, ``n_outputs``,
    ``bin_ms`` and ``output_names``. ``step`` may return a buffer it reuses on
    the next call: copy the result if you keep it.
    """

    #: registry name, written into model files
    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Decoder]]] = {}

    n_inputs: int = 0
    n_outputs: int = 0
    bin_ms: float = 0.0
    output_names: list[str]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            Decoder._registry[cls.kind] = cls

    # --- online -------------------------------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Forget all state; the next ``step`` is the first bin of a new run."""

    @abstractmethod
    def step(self, counts: np.ndarray) -> np.ndarray:
        """Decode one bin: ``counts`` has shape (n_inputs,), returns (n_outputs,)."""

    def adapt(self, target: np.ndarray) -> None:
        """Update the model online towards ``target`` for the last stepped bin.

        Call it right after ``step`` for the same bin. It does nothing unless
        adaptation is on (:meth:`set_adaptation`); decoders without online
        recalibration (``supports_adapt`` False) always ignore it. Non-finite
        target entries (missing) leave their output's weights unchanged.
        """

    supports_adapt: ClassVar[bool] = False

    def set_adaptation(self, enabled: bool) -> None:
        """Switch online recalibration by :meth:`adapt` on or off.

        Switching on keeps whatever an earlier on-period learned; switching off
        freezes the model as it is (``state_dict``/``save`` then write the
        recalibrated weights). A decoder that cannot adapt logs a warning and
        stays off: check :attr:`adapting` afterwards. Never raises.
        """
        if enabled and not self.supports_adapt:
            log.warning("decoder %r has no online adaptation; adapt() stays a no-op",
                        self.kind)
            return
        self._adapt_on = bool(enabled)

    def _adapt_target(self, target: np.ndarray) -> np.ndarray:
        """``target`` as float64 of shape (n_outputs,), in ``output_names`` order."""
        t = np.asarray(target, dtype=np.float64)
        if t.shape != (self.n_outputs,):
            raise ValueError(f"adapt target has shape {t.shape}; this decoder has "
                             f"{self.n_outputs} outputs {list(self.output_names)}")
        return t

    @property
    def adapting(self) -> bool:
        """True while :meth:`adapt` updates the model (read-only; see ``set_adaptation``)."""
        return bool(getattr(self, "_adapt_on", False))

    # --- offline ------------------------------------------------------------
    @abstractmethod
    def fit(self, counts: np.ndarray, targets: np.ndarray, **kwargs: Any) -> Decoder:
        """Fit on (T, n_inputs) counts and (T, n_outputs) targets; returns self."""

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Run a whole recording from a fresh state: (T, n_inputs) -> (T, n_outputs)."""
        self.reset()
        out = np.empty((len(counts), self.n_outputs))
        for t in range(len(counts)):
            out[t] = self.step(counts[t])
        self.reset()
        return out

    # --- persistence ----------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
            "bin_ms": self.bin_ms,
            "output_names": list(getattr(self, "output_names", [])),
        }

    def _restore_metadata(self, meta: dict[str, Any]) -> None:
        """The inverse of the common part of :meth:`metadata`, for ``load_state_dict``."""
        self.n_inputs, self.n_outputs = int(meta["n_inputs"]), int(meta["n_outputs"])
        self.bin_ms = float(meta.get("bin_ms", 0.0))
        self.output_names = list(meta.get("output_names", []))

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """Fitted parameters as named arrays (what ``save`` writes)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore from ``state_dict`` output and ``metadata``."""

    def save(self, path: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write ``<path>.npz`` (weights) and ``<path>.json`` (metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # numpy's stub types **kwds as if a key could be allow_pickle (bool); ours are arrays
        np.savez(path.with_suffix(".npz"), **self.state_dict())  # type: ignore[arg-type]
        meta = self.metadata() | (extra_meta or {})
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=float))
        return path.with_suffix(".json")

    @staticmethod
    def load(path: str | Path) -> Decoder:
        """Load any registered decoder from a model file written by ``save``."""
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        cls = Decoder._registry.get(meta.get("type", ""))
        if cls is None:
            raise ValueError(
                f"{path}: unknown decoder type {meta.get('type')!r}; "
                f"known: {sorted(Decoder._registry)}"
            )
        with np.load(path.with_suffix(".npz")) as z:
            state = {k: z[k] for k in z.files}
        dec = cls.__new__(cls)
        dec.load_state_dict(state, meta)
        return dec


def build_decoder(kind: str, **params: Any) -> Decoder:
    """Create an unfitted decoder by registry name (``kalman``, ``wiener``, ``snn``...)."""
    cls = Decoder._registry.get(kind)
    if cls is None:
        raise ValueError(f"unknown decoder {kind!r}; known: {sorted(Decoder._registry)}")
    return cls(**params)
