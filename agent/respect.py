"""Ignored fields keep their live values when a sync applies: Argo CD's
RespectIgnoreDifferences, always on here.

`plan` reads the live copy of every object of a plan that an ignore rule of the bundle
matches, and gives the object the live values at its ignored paths (`agent.ignore.respect`),
so a sync never resets an HPA's replicas or a webhook's caBundle. An object that does not
exist yet, or cannot be read, is applied as Git has it (a create gets the full object).

It only reads the cluster; what to apply stays the plan's, what to send stays agent.apply's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fleetops.agent import errors, ignore, manifests
from fleetops.agent.context import Context
from fleetops.agent.prepare import Plan, Prepared
from fleetops.proto.v1 import types_pb2


def one(p: Prepared, live: dict[str, Any] | None, *, bundle: types_pb2.Bundle) -> Prepared:
    """`p` with the live values at its ignored paths; `p` itself when nothing is ignored or
    the object is not there."""
    rules = ignore.matching(bundle.ignore_differences, p.key)
    if not rules or live is None:
        return p
    obj = ignore.respect(p.obj, live, rules)
    return Prepared(manifests.Resource(obj, p.resource.source, p.resource.line), p.rt)


async def plan(ctx: Context, bundle: types_pb2.Bundle, planned: Plan) -> Plan:
    """`planned` with live values at the ignored paths of the objects that exist."""
    if not bundle.ignore_differences:
        return planned
    todo = [p for p in planned.prepared if ignore.matching(bundle.ignore_differences, p.key)]
    if not todo:
        return planned

    async def read(p: Prepared) -> dict[str, Any] | None:
        try:
            return await ctx.kube.get(p.rt, namespace=p.key.namespace, name=p.key.name)
        except errors.KubeError:  # the apply will say what is wrong
            return None

    lives = dict(zip((p.key for p in todo), await asyncio.gather(*map(read, todo)), strict=True))
    return dataclasses.replace(  # hooks, failures and notes stay as planned
        planned,
        prepared=[
            one(p, lives[p.key], bundle=bundle) if p.key in lives else p for p in planned.prepared
        ],
    )
