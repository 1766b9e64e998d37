"""The command-line interface: the click app (`app.py`) and the views of a run: on a terminal
(`liveview.py`), one line per event as text or JSON (`lineviews.py`), and the tables and the
end-of-run summary (`tables.py`), all built on safe text, colour and cell widths (`text.py`)."""

from fleet.cli.app import main

__all__ = ["main"]
