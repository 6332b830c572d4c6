"""What the tap takes out of a message without serialising it again: exact wire sizes, tensor bytes in place."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from adversary.payload import payload_of_array, payload_of_ndarray, payload_of_npy, wire_size
from adversary.tap import flatten_content, record_digests


def _content(rng: np.random.Generator) -> RecordDict:
    records: dict = {}
    for r in range(int(rng.integers(0, 5))):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            shapes = [tuple(int(d) for d in rng.integers(0, 70, size=int(rng.integers(0, 4)))) for _ in range(int(rng.integers(0, 5)))]
            records[f"arrays{r}"] = ArrayRecord({("k" * int(rng.integers(1, 200))) + str(i): Array(rng.standard_normal(s).astype(np.float32))
                                                 for i, s in enumerate(shapes)})
        elif kind == 1:
            records[f"metrics{r}"] = MetricRecord({"loss": float(rng.random()), "n": int(rng.integers(0, 2**40)), "v": [1.0, 2.5]})
        else:
            records[f"config{r}"] = ConfigRecord({"name": "héllo wörld", "blob": bytes(int(rng.integers(0, 500))), "on": True,
                                                  "ints": [1, 2, 3]})
    return RecordDict(records)


def test_the_wire_size_is_the_serialised_size_of_any_content() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        content = _content(rng)
        assert wire_size(content) == len(recorddict_to_proto(content).SerializeToString(deterministic=True))
    big = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((512, 512), np.float32))})})  # multi-byte lengths
    assert wire_size(big) == recorddict_to_proto(big).ByteSize()


def test_a_flower_array_is_viewed_in_place_and_read_back_exactly() -> None:
    values = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    array = Array(values)
    payload = payload_of_array(array)
    assert payload.owner is array.data and payload.data.obj is array.data  # no copy of the bytes
    np.testing.assert_array_equal(np.frombuffer(payload.data, payload.dtype).reshape(payload.shape), values)
    for odd in (np.asfortranarray(values.astype(np.float64)), np.array(3, np.int64), np.arange(4) > 1, np.zeros((0, 3))):
        p = payload_of_array(Array(odd))
        assert p.shape == odd.shape and p.dtype == str(odd.dtype)
        np.testing.assert_array_equal(np.frombuffer(p.data, p.dtype).reshape(p.shape), odd)
    assert payload_of_ndarray(np.array(2.5)).shape == ()


def test_npy_bytes_that_are_not_a_plain_array_are_no_tensor() -> None:
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    truncated = io.BytesIO()
    np.save(truncated, np.zeros(10))
    for raw in (objects.getvalue(), truncated.getvalue()[:-3], pickle.dumps(np.zeros(3)), b"\x93NUMPY garbage", "text"):
        assert payload_of_npy(raw) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be stored"):
        payload_of_ndarray(np.array([object()]))


def test_config_arrays_are_tensors_and_every_record_has_a_digest() -> None:
    masked = io.BytesIO()
    np.save(masked, np.arange(6, dtype=np.int64))
    content = RecordDict({"secaggplus_configs": ConfigRecord({"masked": [masked.getvalue()], "stage": "share"}),
                          "metrics": MetricRecord({"num-examples": 8})})
    tensors, metrics, config = flatten_content(content)
    assert list(tensors) == ["secaggplus_configs/masked/0"] and tensors["secaggplus_configs/masked/0"].shape == (6,)
    assert metrics == {"metrics/num-examples": 8} and config["secaggplus_configs/stage"] == "share"
    digests = dict(record_digests(content))
    assert set(digests) == {"secaggplus_configs", "metrics"}
    other = RecordDict({"secaggplus_configs": ConfigRecord({"masked": [masked.getvalue()], "stage": "unmask"}),
                        "metrics": MetricRecord({"num-examples": 8})})
    assert dict(record_digests(other))["secaggplus_configs"] != digests["secaggplus_configs"]
