"""spikeloop service: wire protocol, session runtime and control plane."""

__version__ = "0.1.0"
