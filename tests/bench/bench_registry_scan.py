"""Benchmark: scanning a repository with 5,000 tags (hub.registry.list_tags over `Link`
pagination) on the named fake registry (tests.support.fakeregistry) on loopback: wall time,
HTTP requests and peak Python memory (tracemalloc) per scan, anonymous and with the Bearer
token flow, all tags and capped at maxTags.

Run: .venv/bin/python -m tests.bench.bench_registry_scan [--rounds 5] [--tags 5000]

Prints the median and worst time per case (untraced rounds) and the peak memory of one
more, traced, round (the fake server's threads share the process and are counted too). Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import tracemalloc

from fleetops.hub import registry, registryspec
from tests.support import fakeregistry


async def scan(
    fake: fakeregistry.FakeRegistry, *, max_tags: int, auth: registry.Auth, traced: bool
) -> tuple[float, registry.TagList, int]:
    """One scan: (seconds, the answer, peak traced bytes or 0). Traced scans are slower, so
    times come from untraced ones."""
    image = registry.parse_image(f"{fake.host}/big/app")
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    got = await registry.list_tags(image, max_tags=max_tags, auth=auth)
    took = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if traced else 0
    if traced:
        tracemalloc.stop()
    return took, got, peak


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tags", type=int, default=5000)
    args = parser.parse_args()
    tags = [f"1.{i // 100}.{i % 100}" for i in range(args.tags)]
    cases = [
        ("anonymous, all tags", None, args.tags),
        ("anonymous, maxTags 1200", None, 1200),
        ("bearer token (fresh Auth each scan)", {"robot": "pw"}, args.tags),
    ]
    print(f"scan of a {args.tags}-tag repository on the fake registry, {args.rounds} rounds")
    for name, users, max_tags in cases:
        times: list[float] = []
        peaks: list[float] = []
        got = None
        with fakeregistry.fake_registry(tags={"big/app": tags}, bearer_users=users) as fake:
            for i in range(args.rounds + 1):
                creds = None
                if users:
                    creds = registryspec.Credentials("robot", "pw", source="bench")
                auth = registry.Auth(registry=fake.host, credentials=creds)
                traced = i == args.rounds
                took, got, peak = await scan(fake, max_tags=max_tags, auth=auth, traced=traced)
                (peaks if traced else times).append(peak if traced else took)
        assert got is not None
        print(
            f"  {name:38s} tags {len(got.tags):5d} truncated {str(got.truncated):5s} "
            f"requests {got.requests:2d}  median {statistics.median(times) * 1000:7.1f} ms  "
            f"worst {max(times) * 1000:7.1f} ms  peak memory {max(peaks) / 1024:7.0f} KiB"
        )


if __name__ == "__main__":
    asyncio.run(main())
