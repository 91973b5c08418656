"""APISIX's data_encryption traversal of encrypt_fields paths, without etcd."""

from __future__ import annotations

from pygateway.store.encryption import FieldEncryption

BAR = "77+NmbYqNfN+oLm0aX5akg=="  # "bar" under the key edd1c9f0985e76a2 (APISIX's t/ vector)


def test_paths_walk_lists_and_leaves_of_strings_lists_and_maps() -> None:
    fields = {"p": ["a", "b.c", "l", "m", "absent.x"]}
    f = FieldEncryption(["edd1c9f0985e76a2"], lambda name, _: fields.get(name, []))
    conf = {
        "a": "bar",
        "b": [{"c": "bar"}, {"c": "bar", "d": 1}, 5],
        "l": ["bar", 3],
        "m": {"x": "bar", "y": 2},
    }
    value = {"plugins": {"p": conf, "q": {"a": "bar"}}}
    stored = f.encode("routes/1", value)
    assert stored["plugins"]["p"] == {
        "a": BAR,
        "b": [{"c": BAR}, {"c": BAR, "d": 1}, 5],
        "l": [BAR, 3],
        "m": {"x": BAR, "y": 2},
    }
    assert stored["plugins"]["q"] == {"a": "bar"}  # no encrypt_fields: as it is
    assert value["plugins"]["p"]["a"] == "bar", "encode changed its argument"
    assert f.decode("routes/1", stored) == value
    plain = {"plugins": {"p": {"a": "not-ciphertext"}}}
    assert f.decode("routes/1", plain) is plain  # nothing decrypts: the value itself
