"""The one exception tree of fleet.

    FleetError                   every error fleet raises on purpose; `exit_code` for the CLI
    ├── ConfigError              fleet.toml or the command line is wrong (exit 2)
    ├── StateError               the state store cannot be read or written (exit 2)
    ├── HostSelectionError       a selector matched no host / names an unknown one (exit 2)
    ├── Conflict                 a dashboard request conflicts with a run's or hosts' state (409)
    └── HostError                something went wrong on one host; costs that host only
        ├── ConnectError         the host cannot be reached or authenticated
        │   └── HostKeyError     its host key is unknown (strict) or changed
        ├── ConnectionLost       an established connection dropped
        └── HostLockedError      another run (here or on another controller) holds the host

A failed op is not an exception: it is an OpResult (status, exit code, error, output tail) in
the run record, since one host's failure is data the run goes on with.

Each error carries what a user needs to act on it, and `str(error)` is one line.
"""

from __future__ import annotations


class FleetError(Exception):
    exit_code = 1


class ConfigError(FleetError):
    """A user error in fleet.toml or on the command line."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        prefix = f"{file}: " if file else ""
        super().__init__(f"{prefix}{message}")


class StateError(FleetError):
    """The state directory or database cannot be used."""

    exit_code = 2


class HostSelectionError(FleetError):
    exit_code = 2


class Conflict(FleetError):
    """The request cannot be done in the run's or the hosts' present state (HTTP 409)."""


class HostError(FleetError):
    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.reason = message
        super().__init__(f"{host}: {message}")


class ConnectError(HostError):
    """Connection refused, timed out, authentication failed, name not resolved."""


class HostKeyError(ConnectError):
    def __init__(self, host: str, message: str, *, changed: bool) -> None:
        self.changed = changed
        super().__init__(host, message)


class ConnectionLost(HostError):
    """The connection to a host dropped while a command was running."""


class HostLockedError(HostError):
    def __init__(self, host: str, holder: str) -> None:
        self.holder = holder
        super().__init__(host, f"held by {holder}")
