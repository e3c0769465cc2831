"""Online decoders: one interface (``Decoder``), many models."""

from . import kalman  # noqa: F401  (registers the decoder)
from .base import Decoder, build_decoder

__all__ = ["Decoder", "build_decoder"]
