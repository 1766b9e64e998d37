"""fleet: multi-step deployment pipelines across a fleet of NixOS hosts over SSH."""

__version__ = "0.1.0"
