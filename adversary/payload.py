"""A message's tensors as the tap takes them: raw bytes, dtype and shape, without copying or re-serialising.

Flower carries every array as ``.npy`` bytes; the tap reads the header and keeps a view of the
data behind it, so hashing and storing a 44.7 MB model copies nothing. The wire size is the
exact protobuf size of the message content, computed from the records' structure instead of
serialising the content a second time (a test checks it against Flower's serialiser).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import config_record_to_proto, metric_record_to_proto
from flwr.proto.recorddict_pb2 import Array as ProtoArray
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from adversary.tensor_store import STORED_KINDS

V = TypeVar("V")
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_PEEK = 65_536  # npy headers are padded to a few hundred bytes; anything longer is not ours to parse


@dataclass(frozen=True)
class TensorPayload:
    """One tensor's C-order bytes. ``owner`` is the immutable bytes object ``data`` views (None for a
    numpy array, which may change): the same owner twice is the same content, hashed once."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview
    owner: bytes | None = None

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def payload_of_ndarray(array: np.ndarray) -> TensorPayload:
    if array.dtype.hasobject or array.dtype.kind not in STORED_KINDS:
        raise ValueError(f"a tensor of dtype {array.dtype} cannot be stored (only numbers, booleans and strings)")
    contiguous = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray makes a 0-d array 1-d
    return TensorPayload(str(contiguous.dtype), tuple(int(d) for d in array.shape),
                         memoryview(contiguous.reshape(-1).view(np.uint8)))


def payload_of_npy(raw: bytes) -> TensorPayload | None:
    """The tensor inside ``.npy`` bytes (what ``np.save`` writes), or None if they are not a plain
    numeric array. Never unpickles; a Fortran-ordered array is copied to C order."""
    if not isinstance(raw, bytes) or not raw.startswith(_NPY_MAGIC):
        return None
    head = io.BytesIO(raw[:_HEADER_PEEK])
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    except (ValueError, OSError, EOFError, SyntaxError):
        return None
    if dtype.hasobject or dtype.kind not in STORED_KINDS:
        return None
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    start = head.tell()
    if len(raw) - start != count * dtype.itemsize:
        return None
    if fortran:
        try:
            return payload_of_ndarray(np.load(io.BytesIO(raw), allow_pickle=False))
        except (ValueError, OSError, EOFError):
            return None
    return TensorPayload(str(dtype), tuple(int(d) for d in shape), memoryview(raw)[start:], owner=raw)


def payload_of_array(array: Array) -> TensorPayload:
    """A Flower Array's tensor; arrays that are not plain ``.npy`` go through Flower's own reader."""
    payload = payload_of_npy(array.data) if array.stype == "numpy.ndarray" else None
    return payload if payload is not None else payload_of_ndarray(array.numpy())


class ByIdentity(Generic[V]):
    """Values computed from immutable bytes, remembered by the identity of those bytes (the same
    broadcast handed to a hundred clients is worked on once). It holds the bytes it remembers, so an
    id is not reused while it is remembered; least recently used first out past ``limit`` bytes."""

    def __init__(self, limit: int = 256 << 20) -> None:
        self._seen: OrderedDict[int, tuple[bytes, V]] = OrderedDict()
        self._bytes, self._limit = 0, limit

    def get(self, owner: bytes) -> V | None:
        if (hit := self._seen.get(id(owner))) is not None and hit[0] is owner:
            self._seen.move_to_end(id(owner))
            return hit[1]
        return None

    def put(self, owner: bytes, value: V) -> V:
        self._seen[id(owner)] = (owner, value)
        self._bytes += len(owner)
        while self._bytes > self._limit and len(self._seen) > 1:
            _, (old, _) = self._seen.popitem(last=False)
            self._bytes -= len(old)
        return value


class BroadcastPayloads:
    """The payloads of the arrays a broadcast shares: the same Flower Array bytes are read once."""

    def __init__(self, limit: int = 256 << 20) -> None:
        self._seen: ByIdentity[TensorPayload] = ByIdentity(limit)

    def of(self, array: Array) -> TensorPayload:
        if isinstance(array.data, bytes) and (hit := self._seen.get(array.data)) is not None:
            return hit
        payload = payload_of_array(array)
        return self._seen.put(payload.owner, payload) if payload.owner is not None else payload


# -- the wire size -----------------------------------------------------------
_ITEM = ProtoRecordDict.DESCRIPTOR.fields_by_name["items"].number
_RECORD_FIELD = {
    ArrayRecord: ProtoRecordDict.Item.DESCRIPTOR.fields_by_name["array_record"].number,
    MetricRecord: ProtoRecordDict.Item.DESCRIPTOR.fields_by_name["metric_record"].number,
    ConfigRecord: ProtoRecordDict.Item.DESCRIPTOR.fields_by_name["config_record"].number,
}
_KEY = ProtoRecordDict.Item.DESCRIPTOR.fields_by_name["key"].number
_ARRAY_KEY = ProtoArrayRecord.Item.DESCRIPTOR.fields_by_name["key"].number
_ARRAY_VALUE = ProtoArrayRecord.Item.DESCRIPTOR.fields_by_name["value"].number
_ARRAY_ITEM = ProtoArrayRecord.DESCRIPTOR.fields_by_name["items"].number
_ARRAY_DATA = ProtoArray.DESCRIPTOR.fields_by_name["data"].number


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_len(number: int, payload: int) -> int:
    """A length-delimited field: tag, length, payload."""
    return _varint_len(number << 3) + _varint_len(payload) + payload


def _string_len(number: int, text: str) -> int:
    size = len(text.encode())
    return _field_len(number, size) if size else 0  # proto3 leaves an empty string out


def _array_len(array: Array) -> int:
    skeleton = ProtoArray(dtype=array.dtype, shape=list(array.shape), stype=array.stype).ByteSize()
    size = len(array.data)
    return skeleton + (_field_len(_ARRAY_DATA, size) if size else 0)


def _record_len(record: object) -> int:
    if isinstance(record, ArrayRecord):
        return sum(_field_len(_ARRAY_ITEM, _string_len(_ARRAY_KEY, key) + _field_len(_ARRAY_VALUE, _array_len(array)))
                   for key, array in record.items())
    if isinstance(record, MetricRecord):
        return metric_record_to_proto(record).ByteSize()
    if isinstance(record, ConfigRecord):
        return config_record_to_proto(record).ByteSize()
    raise ValueError(f"unsupported record type: {type(record).__name__}")


def wire_size(content: RecordDict) -> int:
    """The bytes of ``recorddict_to_proto(content)``, without building or serialising it."""
    total = 0
    for key, record in content.items():
        item = _string_len(_KEY, key) + _field_len(_RECORD_FIELD[type(record)], _record_len(record))
        total += _field_len(_ITEM, item)
    return total

