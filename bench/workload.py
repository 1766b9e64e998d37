"""The do-all workload's durations and its ideal times.

Each host's switch takes a duration drawn uniformly from 0.5 to 3 s and its test one from
0.1 to 0.5 s, with a fixed seed (the same hosts get the same durations in every run and every
tool); the zero workload sets them all to 0, which leaves only the pure overhead. The pull is
real git work on every host and counts as 0 in the ideal.

    lockstep ideal  = the sum over ops of the slowest host's duration
    streaming ideal = the largest per-host sum of durations
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

SWITCH_RANGE = (0.5, 3.0)
TEST_RANGE = (0.1, 0.5)


@dataclass(frozen=True)
class Workload:
    name: str  # "zero" | "timed"
    switch: dict[str, float]
    test: dict[str, float]

    def ideal(self, mode: str) -> float:
        if not self.switch:
            return 0.0
        if mode == "streaming":
            return max(self.switch[h] + self.test[h] for h in self.switch)
        return max(self.switch.values()) + max(self.test.values())


def make_workload(name: str, hosts: Sequence[str], seed: int) -> Workload:
    if name == "zero":
        return Workload(name, {}, {})
    if name != "timed":
        raise ValueError(f"unknown workload {name!r} (zero, timed)")
    rng = random.Random(seed)
    switch, test = {}, {}
    for host in hosts:
        switch[host] = round(rng.uniform(*SWITCH_RANGE), 3)
        test[host] = round(rng.uniform(*TEST_RANGE), 3)
    return Workload(name, switch, test)
