"""The command-line interface: the click app (`app.py`) and the terminal views (`views.py`)."""

from fleet.cli.app import main

__all__ = ["main"]
