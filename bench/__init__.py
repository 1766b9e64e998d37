"""fleet's benchmark harness (run by hand: `python bench/run.py --help`; not part of tests)."""
