"""PipelineRegistry and the built-in pipelines."""

from __future__ import annotations

from collections.abc import Iterator

from fleet.errors import ConfigError
from fleet.models import Pipeline, is_valid_name
from fleet.ops.builtin import OpRegistry

BUILTIN_PIPELINES: tuple[Pipeline, ...] = (
    Pipeline("do-all", ("pull", "switch", "test"), "Pull the config, switch to it, test it", True),
    Pipeline(
        "merge-deploy",
        ("merge-pr", "pull", "switch", "test"),
        "Merge a pull request (--pr N), then pull, switch and test",
        True,
    ),
    Pipeline(
        "update-agent",
        ("bump-flake", "pull", "switch", "restart"),
        "Bump fleet's flake input, deploy it and restart the agent",
        True,
    ),
    Pipeline(
        "force-update",
        ("force-rebuild", "restart"),
        "Rebuild bypassing caches, then restart the agent",
        True,
    ),
)


class PipelineRegistry:
    """Pipelines by id; every op they name must be in the op registry."""

    def __init__(self, ops: OpRegistry) -> None:
        self._ops = ops
        self._pipelines: dict[str, Pipeline] = {}

    @classmethod
    def with_builtins(cls, ops: OpRegistry) -> PipelineRegistry:
        registry = cls(ops)
        for pipeline in BUILTIN_PIPELINES:
            registry.register(pipeline)
        return registry

    def register(self, pipeline: Pipeline) -> None:
        """Add a pipeline; a duplicate id, a bad name, no ops, an unknown op or an op listed twice
        is an error."""
        where = f"pipelines.{pipeline.id}"
        if not is_valid_name(pipeline.id):
            raise ConfigError(f"{where}: invalid pipeline name", key=where)
        if pipeline.id in self._pipelines:
            raise ConfigError(f"{where}: duplicate pipeline id {pipeline.id!r}", key=where)
        if not pipeline.ops:
            raise ConfigError(f"{where}.ops: a pipeline needs at least one op", key=where)
        for op_id in pipeline.ops:
            if op_id not in self._ops:
                raise ConfigError(f"{where}.ops: unknown op {op_id!r}", key=f"{where}.ops")
            if pipeline.ops.count(op_id) > 1:  # an op's result is recorded once per host
                raise ConfigError(
                    f"{where}.ops: op {op_id!r} is listed more than once", key=f"{where}.ops"
                )
        self._pipelines[pipeline.id] = pipeline

    def get(self, pipeline_id: str) -> Pipeline:
        try:
            return self._pipelines[pipeline_id]
        except KeyError:
            known = ", ".join(sorted(self._pipelines))
            raise ConfigError(f"unknown pipeline {pipeline_id!r} (known: {known})") from None

    def __contains__(self, pipeline_id: object) -> bool:
        return pipeline_id in self._pipelines

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(self._pipelines.values())

    def __len__(self) -> int:
        return len(self._pipelines)
