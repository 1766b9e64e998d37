"""The engine: runs a pipeline's ops over the chosen hosts and emits what happens as events.

The modules::

    executor.py    PipelineExecutor: lockstep or streaming, && semantics, exclusion, max-fail
    runstate.py    RunState, HostState: the in-memory record of a run, emitting each change
    runners.py     HostOpRunner: one host op over a transport `Session`; OpOutcome
    controller.py  ControllerOpRunner: merge-pr and bump-flake, run locally

The commands come from fleet.ops; the connections from a `SessionFactory` (fleet.transport).
Nothing here prints or writes the store: subscribers of the events do (fleet.events).
"""

from fleet.run.controller import ControllerOpRunner
from fleet.run.executor import PipelineExecutor
from fleet.run.runners import HostOpRunner, OpOutcome
from fleet.run.runstate import HostState, RunState

__all__ = [
    "ControllerOpRunner",
    "HostOpRunner",
    "HostState",
    "OpOutcome",
    "PipelineExecutor",
    "RunState",
]
