"""Content-addressed tensor storage: each distinct tensor's bytes once, named by their SHA-256.

A broadcast to a hundred clients costs one copy, and an evaluation instruction that carries the
round's model costs nothing more. Blobs are appended to pack files (``blobs/pack-NNNNNN.bin``,
a new one for each writer and every 1 GiB); the index says where each digest lies. A blob's bytes
are written before the index row that names them is committed, so a killed writer leaves at most
unreferenced bytes at the end of a pack, never a referenced half blob.

Tensors the tap policy does not keep go to a spool file of their round (``blobs/spool-NNNNNN.bin``)
instead: readable while the adversary looks at them, then dropped, or moved into a pack when an
attack needs them (:class:`adversary.traffic_writer.TrafficWriter` decides).

A log may come from someone else: a reader follows only pack names of the writer's form, inside
``blobs/``, through no link, reads within the file's bounds and checks the digest of what it read.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from fl_sim.safe_paths import file_inside

BLOB_DIR = "blobs"
PACK_FILE = re.compile(r"blobs/(pack|spool)-[0-9]{6}\.bin")
PACK_LIMIT = 1 << 30
STORED_KINDS = "biufcSU"  # numpy dtype kinds the writer stores and a reader accepts: nothing that holds objects
_PACK_NAME = re.compile(r"pack-([0-9]{6})\.bin")


class BlobError(ValueError):
    """A blob the index names cannot be read as it was written (the reason, one line)."""


def digest_of(data: memoryview | bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PackWriter:
    """Appends blobs to this writer's own pack files; never touches a pack another writer made."""

    def __init__(self, traffic_root: Path) -> None:
        self.folder = traffic_root / BLOB_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._name = ""
        self._offset = 0

    def _next_pack(self) -> None:
        self.close()
        taken = [int(m.group(1)) for p in self.folder.iterdir() if (m := _PACK_NAME.fullmatch(p.name))]
        number = max(taken, default=0) + 1
        while True:
            name = f"pack-{number:06d}.bin"
            try:
                self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:  # another writer took it between the listing and the open
                number += 1
        self._name, self._offset = f"{BLOB_DIR}/{name}", 0

    def write(self, data: memoryview | bytes) -> tuple[str, int]:
        """Appends ``data``; returns (pack name, offset) once every byte is in the file."""
        if self._fd is None or self._offset + len(data) > PACK_LIMIT and self._offset:
            self._next_pack()
        assert self._fd is not None
        view, offset = memoryview(data).cast("B"), self._offset
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._offset += len(data)
        return self._name, offset

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SpoolWriter:
    """One append-only file a round for the tensors the policy does not keep; dropped whole."""

    def __init__(self, traffic_root: Path) -> None:
        self.folder = traffic_root / BLOB_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, tuple[int, int]] = {}  # round: (fd, bytes written)

    @staticmethod
    def name(number: int) -> str:
        return f"{BLOB_DIR}/spool-{number:06d}.bin"

    def write(self, number: int, data: memoryview | bytes) -> tuple[str, int]:
        if number not in self._files:
            fd = os.open(self.folder / f"spool-{number:06d}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._files[number] = (fd, 0)
        fd, offset = self._files[number]
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
        self._files[number] = (fd, offset + len(data))
        return self.name(number), offset

    def rounds(self) -> list[int]:
        return sorted(self._files)

    def drop(self, number: int) -> None:
        """Close and delete a round's spool (its index rows are gone or moved first)."""
        if (entry := self._files.pop(number, None)) is not None:
            os.close(entry[0])
        (self.folder / f"spool-{number:06d}.bin").unlink(missing_ok=True)

    def close(self) -> None:
        for number in list(self._files):
            os.close(self._files.pop(number)[0])


class PackReader:
    """Reads blobs by (pack, offset, length) and checks them against their digest."""

    def __init__(self, traffic_root: Path) -> None:
        self.root = traffic_root
        self._fds: dict[str, int] = {}

    def _fd(self, pack: object) -> int:
        if isinstance(pack, str) and pack in self._fds:
            return self._fds[pack]
        path = file_inside(self.root, pack, PACK_FILE)
        if path is None:
            plain = isinstance(pack, str) and PACK_FILE.fullmatch(pack) is not None
            raise BlobError(f"pack {pack!r} " + ("is missing or a link" if plain else "is not of the form blobs/pack-NNNNNN.bin"))
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise BlobError(f"pack {pack!r} cannot be opened ({exc.strerror})") from None
        self._fds[str(pack)] = fd
        return fd

    def read(self, digest: str, pack: object, offset: object, length: object) -> bytearray:
        if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length >= 0):
            raise BlobError(f"blob {digest[:12]} has no valid place in {pack!r} ({offset!r}, {length!r})")
        fd = self._fd(pack)
        buffer = bytearray(length)
        view, done = memoryview(buffer), 0
        while done < length:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise BlobError(f"blob {digest[:12]} runs past the end of {pack}")
            done += got
        if digest_of(buffer) != digest:
            raise BlobError(f"blob {digest[:12]} in {pack} does not match its digest")
        return buffer

    def forget(self, pack: str) -> None:
        """Close a file that is about to be deleted."""
        if (fd := self._fds.pop(pack, None)) is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
