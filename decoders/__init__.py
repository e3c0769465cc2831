"""Online decoders: one interface (``Decoder``), many models."""

from . import biomarker, kalman, rnn, snn, wiener  # noqa: F401  (registers the decoders)
from .base import Decoder, build_decoder

__all__ = ["Decoder", "build_decoder"]
