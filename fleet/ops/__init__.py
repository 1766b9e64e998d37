"""What runs, as commands: the op and pipeline registries and the command builders.

Nothing here runs anything: builders take a validated `Host` (or controller settings) and
return argv lists or shell text, which the engine (fleet.run) hands to a transport.

The modules::

    builtin.py     OpRegistry, the built-in ops, the host ops' and controller ops' builders
    pipelines.py   PipelineRegistry and the built-in pipelines
    detach.py      the scripts of ops that outlive their SSH session (switch, rollback, ...)
"""

from fleet.ops.builtin import BUILTIN_OPS, DETACHED_OPS, OpRegistry
from fleet.ops.pipelines import BUILTIN_PIPELINES, PipelineRegistry

__all__ = ["BUILTIN_OPS", "BUILTIN_PIPELINES", "DETACHED_OPS", "OpRegistry", "PipelineRegistry"]
