"""Regenerates the Python code for proto/v1/*.proto, or checks it is current.

The generated *_pb2.py, *_pb2_grpc.py and their .pyi stubs are committed so that installing
fleetops needs no protoc. This script is the one way they are made: `python proto/codegen.py`
rewrites them, `python proto/codegen.py --check` exits 1 naming every stale file (make check
runs it). It never edits the .proto files.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = pathlib.Path("proto/v1")
# The wheel installs proto/ as fleetops.proto, so protoc must see the files under that name: the
# generated code then imports `fleetops.proto.v1...` and registers "fleetops/proto/v1/*.proto".
NAMED = pathlib.Path("fleetops/proto/v1")
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc with mypy-protobuf into `out`; return the generated files, relative."""
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    bindir = pathlib.Path(sys.executable).parent
    named = out / "include" / "fleetops"
    named.mkdir(parents=True)
    (named / "proto").symlink_to(ROOT / "proto", target_is_directory=True)
    gen = out / "gen"
    gen.mkdir()
    protos = sorted(str(NAMED / p.name) for p in (ROOT / SRC).glob("*.proto"))
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{out / 'include'}",
        f"-I{include}",
        f"--python_out={gen}",
        f"--grpc_python_out={gen}",
        f"--mypy_out=quiet:{gen}",
        f"--mypy_grpc_out=quiet:{gen}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"codegen: protoc failed with exit code {code}")
    (out / SRC).mkdir(parents=True)
    for made in (gen / NAMED).iterdir():
        if made.name.endswith(GENERATED):
            made.rename(out / SRC / made.name)
    return sorted(p.relative_to(out) for p in (out / SRC).iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        files = generate(out)
        existing = sorted(
            p.relative_to(ROOT) for p in (ROOT / SRC).iterdir() if p.name.endswith(GENERATED)
        )
        if ns.check:
            stale = [
                str(f)
                for f in files
                if not (ROOT / f).exists() or not filecmp.cmp(out / f, ROOT / f, shallow=False)
            ]
            stale += [str(f) for f in existing if f not in files]
            if stale:
                print("codegen: generated code is stale, run `make proto`:", *stale, sep="\n  ")
                return 1
            print(f"codegen: {len(files)} generated files are current")
            return 0
        for f in existing:
            if f not in files:
                (ROOT / f).unlink()
        for f in files:
            shutil.copyfile(out / f, ROOT / f)
        print(f"codegen: wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
