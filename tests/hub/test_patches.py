"""The three patch kinds of Fleet's overlays as pure functions: RFC 6902 and RFC 7386 on their
specifications' own examples, Kubernetes' strategic merge on the lists users patch most, and
the choice between them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleetops.hub import patches

BIG = 1_000_000


def jp(doc: Any, *ops: dict[str, Any]) -> Any:
    return patches.json_patch(doc, list(ops), max_copied=BIG)


# ------------------------------------------------------------ RFC 6902 (its appendix A)


@pytest.mark.parametrize(
    ("doc", "op", "want"),
    [
        ({"foo": "bar"}, {"op": "add", "path": "/baz", "value": "qux"},
         {"foo": "bar", "baz": "qux"}),
        ({"foo": ["bar", "baz"]}, {"op": "add", "path": "/foo/1", "value": "qux"},
         {"foo": ["bar", "qux", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, {"op": "remove", "path": "/baz"}, {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, {"op": "remove", "path": "/foo/1"},
         {"foo": ["bar", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, {"op": "replace", "path": "/baz", "value": "boo"},
         {"baz": "boo", "foo": "bar"}),
        ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
         {"op": "move", "from": "/foo/waldo", "path": "/qux/thud"},
         {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
        ({"foo": ["all", "grass", "cows", "eat"]}, {"op": "move", "from": "/foo/1",
                                                    "path": "/foo/3"},
         {"foo": ["all", "cows", "eat", "grass"]}),
        ({"foo": "bar"}, {"op": "add", "path": "/child", "value": {"grandchild": {}}},
         {"foo": "bar", "child": {"grandchild": {}}}),
        ({"foo": ["bar"]}, {"op": "add", "path": "/foo/-", "value": ["abc", "def"]},
         {"foo": ["bar", ["abc", "def"]]}),
        ({"/": 9, "~1": 10}, {"op": "test", "path": "/~01", "value": 10},
         {"/": 9, "~1": 10}),
        ({"a": {"b": 1}}, {"op": "copy", "from": "/a", "path": "/c"},
         {"a": {"b": 1}, "c": {"b": 1}}),
        ({"a": 1}, {"op": "replace", "path": "", "value": [1]}, [1]),
    ],
)  # fmt: skip
def test_json_patch_operations(doc: Any, op: dict[str, Any], want: Any) -> None:
    before = copy.deepcopy(doc)
    assert jp(doc, op) == want
    assert doc == before  # the base is never changed


def test_replace_keeps_the_key_where_it_was() -> None:
    got = jp({"a": 1, "b": 2, "c": 3}, {"op": "replace", "path": "/b", "value": 9})
    assert list(got) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("doc", "op", "message"),
    [
        ({"foo": "bar"}, {"op": "add", "path": "/baz/bat", "value": "qux"},
         "/baz does not exist"),
        ({"foo": "bar"}, {"op": "remove", "path": "/nope"}, "/nope does not exist"),
        ({"foo": "bar"}, {"op": "replace", "path": "/nope", "value": 1}, "/nope does not exist"),
        ({"baz": "qux"}, {"op": "test", "path": "/baz", "value": "bar"}, "the value differs"),
        ({"foo": [1]}, {"op": "add", "path": "/foo/5", "value": 2}, "index 5 is out of range"),
        ({"foo": [1]}, {"op": "remove", "path": "/foo/01"}, "'01' is not an array index"),
        ({"foo": 1}, {"op": "frobnicate", "path": "/foo"}, "unknown op 'frobnicate'"),
        ({"foo": 1}, {"op": "add", "path": "foo", "value": 1}, "must be a JSON pointer"),
        ({"foo": 1}, {"op": "add", "path": "/bar"}, "needs a 'value'"),
        ({"a": {"b": 1}}, {"op": "move", "from": "/a", "path": "/a/b/c"},
         "cannot move a value into itself"),
    ],
)  # fmt: skip
def test_json_patch_errors_name_the_operation(doc: Any, op: dict[str, Any], message: str) -> None:
    with pytest.raises(patches.PatchError) as err:
        jp(doc, {"op": "add", "path": "/ok", "value": 1}, op)
    assert str(err.value).startswith(f"operation 1 ({op['op']} {op['path']}): ")
    assert message in str(err.value)


def test_copies_cannot_blow_a_document_up() -> None:
    doubling = [{"op": "copy", "from": "/a", "path": "/a/x"} for _ in range(40)]
    with pytest.raises(patches.PatchError, match="the values copied exceed 10000 characters"):
        patches.json_patch({"a": {"v": "x" * 100}}, doubling, max_copied=10_000)


def test_a_json_patch_is_a_list() -> None:
    with pytest.raises(patches.PatchError, match="must be a list of operations"):
        patches.json_patch({}, {"op": "add"}, max_copied=BIG)


# ------------------------------------------------------------ RFC 7386 (its appendix A)


@pytest.mark.parametrize(
    ("base", "patch", "want"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch(base: Any, patch: Any, want: Any) -> None:
    assert patches.merge_patch(base, patch) == want


# ------------------------------------------------------------ strategic merge


def pod_spec(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": spec}},
    }


def smp_spec(base: dict[str, Any], patch_spec: dict[str, Any]) -> Any:
    before = copy.deepcopy(base)
    out = patches.strategic_merge(base, {"spec": {"template": {"spec": patch_spec}}})
    assert base == before
    return out["spec"]["template"]["spec"]


def test_containers_merge_by_name_and_new_ones_are_appended() -> None:
    base = pod_spec(containers=[{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}])
    got = smp_spec(base, {"containers": [{"name": "c", "image": "c:1"},
                                         {"name": "a", "image": "a:2"}]})  # fmt: skip
    assert got["containers"] == [
        {"name": "a", "image": "a:2"}, {"name": "b", "image": "b:1"}, {"name": "c", "image": "c:1"}
    ]  # fmt: skip


def test_container_lists_merge_by_their_keys() -> None:
    base = pod_spec(
        containers=[{
            "name": "a",
            "ports": [{"containerPort": 80, "name": "http"}],
            "env": [{"name": "A", "value": "1"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "args": ["--one"],
        }],
        initContainers=[{"name": "init", "image": "i:1"}],
        volumes=[{"name": "data", "emptyDir": {}}],
        tolerations=[{"key": "a"}],
    )  # fmt: skip
    got = smp_spec(base, {
        "containers": [{
            "name": "a",
            "ports": [{"containerPort": 443, "name": "https"}],
            "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "args": ["--two"],
        }],
        "initContainers": [{"name": "init", "image": "i:2"}],
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "tolerations": [{"key": "b"}],
    })  # fmt: skip
    a = got["containers"][0]
    assert [p["containerPort"] for p in a["ports"]] == [80, 443]
    assert a["env"] == [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]
    assert [m["mountPath"] for m in a["volumeMounts"]] == ["/data", "/cache"]
    assert a["args"] == ["--two"]  # a list without a merge key is replaced
    assert got["initContainers"] == [{"name": "init", "image": "i:2"}]
    assert [v["name"] for v in got["volumes"]] == ["data", "cache"]
    assert got["tolerations"] == [{"key": "b"}]


def test_service_ports_merge_by_port_and_finalizers_are_a_set() -> None:
    base = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "finalizers": ["a"]},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]},
    }
    got = patches.strategic_merge(base, {
        "metadata": {"finalizers": ["b", "a"]},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080},
                                                   {"port": 443}]},
    })  # fmt: skip
    assert got["metadata"]["finalizers"] == ["a", "b"]
    assert got["spec"] == {
        "type": "LoadBalancer",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}, {"port": 443}],
    }


def test_cronjob_pod_spec_is_found_through_the_job_template() -> None:
    base = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}}}},
    }  # fmt: skip
    patch = {"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
        {"name": "b", "image": "b:2"}]}}}}}}  # fmt: skip
    got = patches.strategic_merge(base, patch)
    containers = got["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["a:1", "b:2"]


def test_patch_delete_and_replace_directives() -> None:
    base = pod_spec(
        containers=[{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}],
        volumes=[{"name": "x", "emptyDir": {}}],
        securityContext={"runAsUser": 1, "fsGroup": 2},
        affinity={"nodeAffinity": {}},
    )
    got = smp_spec(base, {
        "containers": [{"name": "b", "$patch": "delete"}, {"name": "gone", "$patch": "delete"}],
        "volumes": [{"$patch": "replace"}, {"name": "y", "emptyDir": {}}],
        "securityContext": {"$patch": "replace", "runAsNonRoot": True},
        "affinity": {"$patch": "delete"},
    })  # fmt: skip
    assert got["containers"] == [{"name": "a", "image": "a:1"}]
    assert got["volumes"] == [{"name": "y", "emptyDir": {}}]
    assert got["securityContext"] == {"runAsNonRoot": True}
    assert "affinity" not in got


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"$retainKeys": ["a"]}, "$retainKeys is not supported"),
        ({"$setElementOrder/containers": [{"name": "a"}]}, "$setElementOrder/containers is not"),
        ({"$deleteFromPrimitiveList/args": ["x"]}, "$deleteFromPrimitiveList/args is not"),
        ({"containers": [{"image": "x"}]}, "each item needs its merge key 'name'"),
        ({"$patch": "frobnicate"}, "unknown $patch: 'frobnicate'"),
    ],
)
def test_what_strategic_merge_refuses(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(patches.PatchError) as err:
        smp_spec(pod_spec(containers=[{"name": "a"}]), patch)
    assert message in str(err.value)
    assert str(err.value).startswith("/spec/template/spec")


# ------------------------------------------------------------ which kind


@pytest.mark.parametrize(
    ("base", "patch", "style"),
    [
        ({"apiVersion": "apps/v1", "kind": "Deployment"}, [], patches.Style.JSON_PATCH),
        ({"apiVersion": "apps/v1", "kind": "Deployment"}, {}, patches.Style.STRATEGIC),
        ({"apiVersion": "v1", "kind": "Service"}, {}, patches.Style.STRATEGIC),
        ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role"}, {},
         patches.Style.STRATEGIC),
        ({"apiVersion": "example.com/v1", "kind": "Deployment"}, {}, patches.Style.MERGE),
        ({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}, {},
         patches.Style.MERGE),
        ({"apiVersion": "v1", "kind": "Widget"}, {}, patches.Style.MERGE),
        ({"replicas": 3}, {}, patches.Style.MERGE),
        (["a"], {}, patches.Style.MERGE),
    ],
)  # fmt: skip
def test_the_patch_kind_is_chosen_as_fleet_does(
    base: Any, patch: Any, style: patches.Style
) -> None:
    assert patches.patch_style(base, patch) is style
