"""How fleet reaches a host: a `Session` per host per run, one persistent shell on it.

The modules::

    base.py        Session, SessionFactory, CommandResult: the interface the engine sees
    protocol.py    the persistent shell's wire protocol: wrapping, markers, host lock, kill
    shell.py       ShellSession: a Session over any byte stream to a shell
    ssh.py         SshSession: over SSH (asyncssh), with jump hosts
    hostkeys.py    KnownHostsCache, HostKeyCheck: known_hosts and the host key policy
    local.py       LocalSession: a local `sh` (unit tests)
    _asyncssh.py   the one import of asyncssh

Only the interface is imported here: asyncssh is loaded when `ssh.py` is.
"""

from fleet.transport.base import CommandResult, Session, SessionFactory

__all__ = ["CommandResult", "Session", "SessionFactory"]
