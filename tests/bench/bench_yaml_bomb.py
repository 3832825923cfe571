"""Benchmark: how fast each YAML entry point refuses a billion-laughs bomb, against parsing a
legitimate file of the same size class with PyYAML's own safe loader (the baseline).

Run: .venv/bin/python -m tests.bench.bench_yaml_bomb [--rounds 20]

Entry points: the bounded loader itself, hub.yaml (hub.config.parse), fleet.yaml
(hub.fleetyaml.apply) and the agent's manifest parser (agent.manifests.parse_bundle). Prints
the median and worst refusal time per entry point, and the baseline. Not a timed test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import yaml

from fleetops.agent import manifests
from fleetops.hub import config, errors, fleetyaml
from fleetops.proto import yamlsafe
from fleetops.proto.v1 import types_pb2
from tests.support import hostile


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        try:
            call()
        except (yaml.YAMLError, errors.HubError):
            pass
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    bomb = hostile.bomb(9)
    app = config.App(name="web", repo="platform", path="apps/web")
    bundle = types_pb2.Bundle(app="web", namespace="web")
    bundle.manifests.add(source="bomb.yaml", yaml=bomb)
    legit = "\n".join(f"k{i}: [a, b, c, d, e, f, g, h, i, j]" for i in range(9)) + "\n"
    cases: dict[str, Callable[[], object]] = {
        "bounded loader": lambda: yamlsafe.load(bomb, source="bomb.yaml"),
        "hub.yaml": lambda: config.parse(bomb, file="hub.yaml"),
        "fleet.yaml": lambda: fleetyaml.apply(app, bomb),
        "agent manifests": lambda: manifests.parse_bundle(bundle),
    }
    base = timed(lambda: yaml.safe_load(legit), rounds)
    print(f"bomb: {len(bomb)} bytes, 10^9 strings if expanded; {rounds} rounds each")
    print(f"baseline yaml.safe_load of a {len(legit)}-byte legit file: "
          f"median {statistics.median(base) * 1e3:.2f} ms")  # fmt: skip
    for name, call in cases.items():
        t = timed(call, rounds)
        print(
            f"{name:>16}: refused in median {statistics.median(t) * 1e3:.2f} ms, "
            f"worst {max(t) * 1e3:.2f} ms ({statistics.median(t) / statistics.median(base):.1f}x "
            "the baseline)"
        )


if __name__ == "__main__":
    main()
