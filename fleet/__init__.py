"""fleet: multi-step deployment pipelines across a fleet of NixOS hosts over SSH."""

from importlib.metadata import version as _version

__version__ = _version("fleet")  # pyproject.toml is the one place it is written
