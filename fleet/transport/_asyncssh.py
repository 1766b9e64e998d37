"""The one place fleet imports asyncssh.

asyncssh's import touches cryptography's DSA names, and cryptography 51 deprecated them: every
command that uses SSH would print ten `CryptographyDeprecationWarning` lines that say nothing
about fleet. Exactly that warning is silenced here, by category and by module (asyncssh's own
modules), for the import alone; every other warning stays as it is (and the tests turn them into
errors). Every module of fleet that needs asyncssh imports it from here.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)"
    )
    import asyncssh

__all__ = ["asyncssh"]
