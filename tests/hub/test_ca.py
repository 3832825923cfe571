"""The hub's CA: kept in the data directory, or taken from a key file (a Secret in a cluster),
with a pin that survives reissued certificates and new data directories."""

from __future__ import annotations

import pathlib

import pytest

from fleetops.hub import ca, errors


def test_a_key_file_gives_the_same_pin_on_any_data_directory(tmp_path: pathlib.Path) -> None:
    key = tmp_path / "ca.key"
    key.write_bytes(ca.new_key_pem())
    first = ca.load_or_create(tmp_path / "a", ["hub.example.com"], key_file=key)
    second = ca.load_or_create(tmp_path / "b", ["hub.example.com", "10.0.0.1"], key_file=key)
    assert first.pin == second.pin
    assert ca.load_or_create(tmp_path / "c", ["x"]).pin != first.pin  # no key file: its own key


def test_a_new_key_file_replaces_the_certificate_of_the_old_key(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    own = ca.load_or_create(data, ["hub"])
    key = tmp_path / "ca.key"
    key.write_bytes(ca.new_key_pem())
    given = ca.load_or_create(data, ["hub"], key_file=key)
    assert given.pin != own.pin
    assert (data / "ca.crt").read_bytes() == given.cert_pem  # what agents and clients are given


def test_a_bad_key_file_says_how_to_make_one(tmp_path: pathlib.Path) -> None:
    key = tmp_path / "ca.key"
    key.write_text("not a key")
    with pytest.raises(errors.HubError, match="fleetops-hub ca new-key"):
        ca.load_or_create(tmp_path / "d", ["hub"], key_file=key)
