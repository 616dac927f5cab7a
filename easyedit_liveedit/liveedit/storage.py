"""An expert library on disk: sealed safetensors shards, a checksummed manifest, and an append-only journal.

Layout of a library folder::

    manifest.json               format, version, identity of the editor, dtype and per-expert shapes, the sealed
                                shards (file, expert count, id range, bytes, SHA-256), removed ids, the current
                                journal's name; and a checksum of all that
    shard-000001.safetensors    sealed experts, never rewritten (``ids``, ``key``, ``psi``, ``phi``, ``U``, ``V``)
    journal-000002.bin          experts committed since the last seal, one CRC-checked record per add or remove
    lock                        held (``flock``) by the one process that may write

Commit protocol: the records of one ``add`` are appended to the journal and ``fsync``ed before ``append``
returns; that is the commit. Every ``shard_size`` journal experts are sealed: the shard is written to a temporary
file, ``fsync``ed and renamed, then the manifest, naming the shard and a new empty journal, replaces the old one
the same way (the commit point of a seal); only then is the old journal deleted. A crash anywhere leaves either the
old manifest with its journal or the new one; files a manifest does not list are deleted when the folder is opened
for writing, and a journal record cut short at its end (an append that never returned) is dropped.

Why not the ``safetensors`` package: the method layer imports only torch and the standard library (``liveedit``
runs without EasyEdit, transformers or anything else installed). The format is small and fixed (an 8-byte
little-endian header length, a JSON header of dtype / shape / byte offsets, the raw bytes), so this module writes
it with the standard library and reads it memory-mapped with ``torch.frombuffer``; the tests check that the
``safetensors`` package reads our shards and that we read its files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

FORMAT = "easyedit-liveedit-expert-library"
VERSION = 1
FACTORS = ("psi", "phi", "U", "V")  # per-expert tensors, in storage order
KEY_BYTES = 16  # per expert: a digest of the caller's edit key (all zero: none), so a resumed run can skip it
MANIFEST, JOURNAL, LOCK = "manifest.json", "journal.bin", "lock"

# safetensors dtype names (https://github.com/huggingface/safetensors, "Format")
_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DTYPES_ST = {name: dtype for dtype, name in _ST_DTYPES.items()}
_DTYPE_NAMES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

# journal record: magic, kind, payload length, CRC-32 of the payload, CRC-32 of those four; then the payload
_RECORD = struct.Struct("<4sBIII")
_MAGIC = b"LEJ1"
_ADD, _REMOVE = 1, 2


class LibraryFileError(ValueError):
    """A library folder, shard, manifest or journal is missing, truncated, altered or of another format."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the manifest's spelling)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str, where: str = "library") -> torch.dtype:
    """The floating dtype a manifest or an option names; ``ValueError`` naming ``where`` otherwise."""
    if name not in _DTYPE_NAMES:
        raise ValueError(f"{where}: dtype {name!r} is not one of {', '.join(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def key_digest(key: str) -> bytes:
    """The 16 bytes stored for an edit key (never all zero, which means "no key")."""
    digest = hashlib.sha256(key.encode()).digest()[:KEY_BYTES]
    return digest if any(digest) else b"\x01" + digest[1:]


# ----------------------------------------------------------------------------------------- durable file operations
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, chunks: Iterator[bytes | memoryview]) -> tuple[int, str]:
    """Write ``chunks`` to ``path`` via a temporary file, fsync, rename, fsync the folder; returns (bytes, sha256)."""
    tmp = path.with_name(path.name + ".tmp")
    digest, size = hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return size, digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- safetensors format
def _raw(t: Tensor) -> memoryview:
    """The bytes of ``t`` (contiguous, CPU), without a copy where it already is."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def safetensors_chunks(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Iterator[memoryview]:
    """The bytes of a safetensors file holding ``tensors`` (in the given order) and string ``metadata``."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _ST_DTYPES:
            raise TypeError(f"safetensors: tensor {name!r} has unsupported dtype {t.dtype}")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned, as the reference writer pads it
    yield memoryview(struct.pack("<Q", len(text)) + text)
    for t in tensors.values():
        yield _raw(t)


def read_safetensors(path: Path, expected_bytes: int | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Memory-map a safetensors file: tensors share the file's pages (copy-on-write, never written back).

    Raises:
        LibraryFileError: naming ``path`` if it is shorter or longer than ``expected_bytes`` or its header does not
            describe its bytes exactly.
    """
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise LibraryFileError(f"{path}: {size} bytes, the manifest records {expected_bytes} (truncated or altered)")
    if size < 8:
        raise LibraryFileError(f"{path}: {size} bytes, too short for a safetensors file")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    (header_len,) = struct.unpack_from("<Q", mapped, 0)
    if header_len > size - 8:
        raise LibraryFileError(f"{path}: header of {header_len} bytes in a file of {size}")
    try:
        header = json.loads(bytes(mapped[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LibraryFileError(f"{path}: unreadable safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise LibraryFileError(f"{path}: safetensors header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    start, tensors, covered = 8 + header_len, {}, 0
    for name, info in sorted(header.items(), key=lambda item: _offsets(item, path)[0]):
        begin, end = _offsets((name, info), path)
        dtype = _DTYPES_ST.get(info.get("dtype"))
        shape = info.get("shape")
        if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise LibraryFileError(f"{path}: tensor {name!r} has a bad dtype or shape in the header")
        count = int(torch.Size(shape).numel())
        if begin != covered or end - begin != count * torch.empty(0, dtype=dtype).element_size():
            raise LibraryFileError(f"{path}: tensor {name!r} does not match its byte offsets")
        covered = end
        tensors[name] = (
            torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin).view(shape)
            if count
            else torch.empty(shape, dtype=dtype)
        )
    if start + covered != size:
        raise LibraryFileError(f"{path}: {size - start - covered} bytes beyond the tensors its header lists")
    return tensors, metadata


def _offsets(item: tuple[str, Any], path: Path) -> tuple[int, int]:
    name, info = item
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise LibraryFileError(f"{path}: tensor {name!r} has no valid data_offsets")
    if not 0 <= offsets[0] <= offsets[1]:
        raise LibraryFileError(f"{path}: tensor {name!r} has data_offsets {offsets}")
    return offsets[0], offsets[1]


# ----------------------------------------------------------------------------------------- manifest
def _manifest_checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_manifest(folder: Path, body: dict[str, Any]) -> None:
    text = json.dumps({**body, "checksum": _manifest_checksum(body)}, indent=1).encode()
    _write_atomically(folder / MANIFEST, iter([text]))


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise LibraryFileError(f"{folder}: not an expert library (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LibraryFileError(f"{path}: unreadable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LibraryFileError(f"{path}: not an {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise LibraryFileError(f"{path}: format version {manifest.get('version')!r}, this code reads {VERSION}")
    checksum = manifest.pop("checksum", None)
    if checksum != _manifest_checksum(manifest):
        raise LibraryFileError(f"{path}: checksum mismatch (the manifest was altered)")
    _check_fields(manifest, {"identity": dict, "shards": list, "removed": list, "next_id": int, "next_file": int,
                             "journal": str}, path)  # fmt: skip
    for entry in manifest["shards"]:
        if not isinstance(entry, dict):
            raise LibraryFileError(f"{path}: a shard entry is not an object")
        _check_fields(entry, {"file": str, "experts": int, "first_id": int, "last_id": int, "bytes": int,
                              "sha256": str}, path, "shard entry ")  # fmt: skip
    if not all(_is_count(i) for i in manifest["removed"]):
        raise LibraryFileError(f"{path}: field 'removed' must list expert ids (integers >= 0)")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_fields(body: dict[str, Any], kinds: dict[str, type], path: Path, what: str = "") -> None:
    for key, kind in kinds.items():
        value = body.get(key)
        if not isinstance(value, kind) or (kind is int and not _is_count(value)):
            raise LibraryFileError(f"{path}: {what}field {key!r} missing or not a {kind.__name__}"
                                   + (" >= 0" if kind is int else ""))  # fmt: skip


# ----------------------------------------------------------------------------------------- what a folder holds
@dataclass
class Shapes:
    """Storage dtype and per-expert shapes, fixed by the first expert."""

    dtype: torch.dtype
    shapes: dict[str, tuple[int, ...]]

    def row_bytes(self) -> int:
        """Bytes of one expert's factors (``psi, phi, U, V``) in the journal."""
        size = torch.empty(0, dtype=self.dtype).element_size()
        return sum(size * int(torch.Size(self.shapes[name]).numel()) for name in FACTORS)

    def as_json(self) -> dict[str, Any]:
        return {"dtype": dtype_name(self.dtype), "shapes": {k: list(v) for k, v in self.shapes.items()}}


@dataclass
class Contents:
    """Everything a library folder holds, as ``open``/``read_library`` found it.

    ``segments`` are the sealed shards (memory-mapped), then one in-memory segment with the journal's experts;
    each maps ``ids`` (n,), ``key`` (n, 16) and the factors to tensors with n rows, ids increasing across segments.
    """

    identity: dict[str, Any]
    layout: Shapes | None
    segments: list[dict[str, Tensor]]
    removed: set[int]
    next_id: int
    journal_rows: int = 0  # experts in the journal (the last segment), not yet sealed


def _check_identity(saved: dict[str, Any], current: dict[str, Any] | None, where: Path) -> None:
    """Raise ``LibraryFileError`` naming the first field where the folder's identity differs from ``current``."""
    if current is None:
        return
    if not saved and current:
        raise LibraryFileError(f"{where}: the library records no identity, so whether its experts fit is unknown")
    for key in [*current, *(k for k in saved if k not in current)]:  # shapes before the networks' fingerprint
        if saved.get(key) != current.get(key):
            raise LibraryFileError(
                f"{where}: the library was made with {key}={saved.get(key)!r}, this editor has "
                f"{key}={current.get(key)!r}; its experts mean nothing here"
            )


def _read_shards(folder: Path, manifest: dict[str, Any], layout: Shapes | None, verify: bool) -> list[dict]:
    segments = []
    previous = -1
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if Path(entry["file"]).name != entry["file"] or not entry["file"].startswith("shard-"):
            raise LibraryFileError(f"{folder / MANIFEST}: shard name {entry['file']!r} is not a plain file name")
        if not path.is_file():
            raise LibraryFileError(f"{path}: shard listed in the manifest is missing")
        tensors, _ = read_safetensors(path, expected_bytes=entry["bytes"])
        if verify and _file_sha256(path) != entry["sha256"]:
            raise LibraryFileError(f"{path}: SHA-256 differs from the manifest's (the shard was altered)")
        _check_segment(tensors, layout, int(entry["experts"]), path)
        ids = tensors["ids"]
        if len(ids) and (int(ids[0]) != entry["first_id"] or int(ids[0]) <= previous or not _increasing(ids)):
            raise LibraryFileError(f"{path}: expert ids are not increasing from the manifest's first_id")
        previous = int(ids[-1]) if len(ids) else previous
        segments.append(tensors)
    return segments


def _increasing(ids: Tensor) -> bool:
    return bool((ids[1:] > ids[:-1]).all()) if len(ids) > 1 else True


def _check_segment(tensors: dict[str, Tensor], layout: Shapes | None, count: int, path: Path) -> None:
    expected = {"ids": (torch.int64, (count,)), "key": (torch.uint8, (count, KEY_BYTES))}
    if layout is None:
        raise LibraryFileError(f"{path}: shard of a library whose manifest records no expert shapes")
    expected.update({name: (layout.dtype, (count, *layout.shapes[name])) for name in FACTORS})
    if set(tensors) != set(expected):
        raise LibraryFileError(f"{path}: holds tensors {sorted(tensors)}, expected {sorted(expected)}")
    for name, (dtype, shape) in expected.items():
        if tensors[name].dtype != dtype or tuple(tensors[name].shape) != shape:
            raise LibraryFileError(
                f"{path}: tensor {name!r} is {tensors[name].dtype} {tuple(tensors[name].shape)}, "
                f"expected {dtype} {shape}"
            )


def _layout_from(manifest: dict[str, Any], where: Path) -> Shapes | None:
    if manifest.get("layout") is None:
        return None
    layout = manifest["layout"]
    shapes = layout.get("shapes") if isinstance(layout, dict) else None
    if not (isinstance(shapes, dict) and isinstance(layout.get("dtype"), str) and layout["dtype"] in _DTYPE_NAMES):
        raise LibraryFileError(f"{where}: field 'layout' is malformed (dtype and shapes expected)")
    for name in FACTORS:
        shape = shapes.get(name)
        if not (isinstance(shape, list) and 0 < len(shape) <= 4 and all(_is_count(s) and s > 0 for s in shape)):
            raise LibraryFileError(f"{where}: field 'layout' gives {name} no valid shape")
    return Shapes(parse_dtype(layout["dtype"]), {name: tuple(shapes[name]) for name in FACTORS})


# ----------------------------------------------------------------------------------------- the journal
def _add_payload(ids: Tensor, keys: Tensor, columns: dict[str, Tensor], row: int) -> bytes:
    parts = [struct.pack("<q", int(ids[row])), bytes(_raw(keys[row]))]
    parts += [bytes(_raw(columns[name][row])) for name in FACTORS]
    return b"".join(parts)


def _record(kind: int, payload: bytes) -> bytes:
    header = struct.pack("<4sBII", _MAGIC, kind, len(payload), zlib.crc32(payload))
    return header + struct.pack("<I", zlib.crc32(header)) + payload


def _replay(path: Path, layout: Shapes | None) -> tuple[list[tuple[int, bytes]], int]:
    """Parse the journal: its ``(kind, payload)`` records and the byte length of the valid part.

    A record cut short at the end of the file (or a zero-filled tail) is an append that never returned, so it was
    never committed: it is left out and the valid length reported. Any other damage is refused, naming the byte: a
    header that fails its own CRC-32 (so a changed length cannot pass for a cut), a payload that fails its CRC-32.
    """
    if not path.is_file():
        raise LibraryFileError(f"{path}: the journal the manifest lists is missing")
    data = memoryview(path.read_bytes())
    records, pos = [], 0
    while pos < len(data):
        rest = data[pos:]
        if not any(rest):
            break  # a zero-filled tail (the file grew, its bytes never reached the disk): never committed
        if len(rest) < _RECORD.size:
            if bytes(rest[:4]) != _MAGIC[: len(rest[:4])]:
                raise LibraryFileError(f"{path}: damaged record at byte {pos}")
            break  # a torn header at the end: never committed
        magic, kind, length, crc, header_crc = _RECORD.unpack_from(rest)
        if magic != _MAGIC or zlib.crc32(rest[: _RECORD.size - 4]) != header_crc or kind not in (_ADD, _REMOVE):
            raise LibraryFileError(f"{path}: damaged record header at byte {pos}")
        if len(rest) < _RECORD.size + length:
            break  # a torn payload at the end: never committed
        payload = bytes(rest[_RECORD.size : _RECORD.size + length])
        if zlib.crc32(payload) != crc:
            raise LibraryFileError(f"{path}: record at byte {pos} fails its CRC-32 (the journal was altered)")
        expected = 8 if kind == _REMOVE else 8 + KEY_BYTES + (layout.row_bytes() if layout else -1)
        if length != expected:
            raise LibraryFileError(f"{path}: record at byte {pos} has {length} bytes, expected {expected}")
        records.append((kind, payload))
        pos += _RECORD.size + length
    return records, pos


def _journal_segment(records: list[tuple[int, bytes]], layout: Shapes) -> tuple[dict, list[int]]:
    """The journal's adds as one segment, and the ids its removes name."""
    rows, removes = [], []
    for kind, payload in records:
        (expert_id,) = struct.unpack_from("<q", payload)
        if kind == _REMOVE:
            removes.append(expert_id)
        else:
            rows.append(payload)
    n = len(rows)
    blob = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
    table = blob.view(n, -1) if n else blob.view(0, 8 + KEY_BYTES + layout.row_bytes())
    segment = {"ids": table[:, :8].contiguous().view(torch.int64).reshape(n), "key": table[:, 8:24].clone()}
    offset = 8 + KEY_BYTES
    size = torch.empty(0, dtype=layout.dtype).element_size()
    for name in FACTORS:
        width = size * int(torch.Size(layout.shapes[name]).numel())
        segment[name] = table[:, offset : offset + width].contiguous().view(layout.dtype).view(n, *layout.shapes[name])
        offset += width
    return segment, removes


# ----------------------------------------------------------------------------------------- reading and writing
def read_library(
    path: str | os.PathLike, identity: dict[str, Any] | None = None, verify: bool = True
) -> tuple[Contents, int]:
    """Read a library folder without writing anything: its contents and the byte length of the journal's valid part.

    Args:
        identity: the reading editor's identity; every field must match the manifest's (``LibraryFileError``
            names the first that differs).
        verify: also compare every shard's SHA-256 with the manifest (reads every byte once); without it shards are
            checked for size and header only, and stay unread until routing touches them.
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    _check_identity(manifest["identity"], identity, folder)
    layout = _layout_from(manifest, folder / MANIFEST)
    segments = _read_shards(folder, manifest, layout, verify)
    journal = folder / _journal_name(manifest, folder)
    records, valid = _replay(journal, layout)
    removed = {int(i) for i in manifest["removed"]}
    journal_rows = 0
    if records and layout is None:
        raise LibraryFileError(f"{journal}: holds records, but the manifest records no expert shapes")
    if records:
        segment, removes = _journal_segment(records, layout)
        ids = segment["ids"]
        if len(ids) and (int(ids[0]) < manifest["next_id"] or not _increasing(ids)):
            raise LibraryFileError(f"{journal}: expert ids are not increasing from the manifest's next_id")
        if len(ids):
            segments.append(segment)
            journal_rows = len(ids)
        removed.update(removes)
    next_id = max([manifest["next_id"], *(int(s["ids"][-1]) + 1 for s in segments if len(s["ids"]))])
    return Contents(manifest["identity"], layout, segments, removed, next_id, journal_rows), valid


def _journal_name(manifest: dict[str, Any], folder: Path) -> str:
    name = manifest.get("journal")
    if not isinstance(name, str) or Path(name).name != name or not name.startswith("journal-"):
        raise LibraryFileError(f"{folder / MANIFEST}: field 'journal' is missing or not a journal file name")
    return name


class LibraryStore:
    """The writing side of a library folder: held by one process (``flock``); appends are durable on return."""

    def __init__(self, folder: Path, lock: BinaryIO, body: dict[str, Any], journal_rows: int, shard_size: int) -> None:
        self.folder = folder
        self.shard_size = shard_size
        self._lock = lock
        self._body = body  # the manifest as last written
        self._journal: BinaryIO | None = None
        self._journal_rows = journal_rows  # experts in the journal, sealed into a shard at shard_size
        self.layout = _layout_from(body, folder / MANIFEST)
        self._open_journal()

    @classmethod
    def open(
        cls, path: str | os.PathLike, identity: dict[str, Any], shard_size: int = 4096, verify: bool = True
    ) -> tuple[LibraryStore, Contents]:
        """Open (or create) the library folder ``path`` for appending, and return what it holds.

        Drops a torn journal tail (an append that never returned) and deletes files the manifest does not list (left
        by a crash mid-seal).

        Raises:
            LibraryFileError: the folder is not a library, a file is truncated or altered, or the identity differs.
            BlockingIOError: another process has it open for writing.
        """
        if shard_size < 1:
            raise ValueError(f"LibraryStore: shard_size must be >= 1, got {shard_size}")
        folder = Path(path)
        if folder.is_dir() and not (folder / MANIFEST).exists():
            ours = (LOCK, "journal-000000.bin", MANIFEST + ".tmp")  # a creation that stopped before its manifest
            if any(p.name not in ours for p in folder.iterdir()):
                raise LibraryFileError(f"{folder}: exists, is not empty and is not an expert library")
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK, "ab")  # noqa: SIM115 (held for the store's lifetime)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise BlockingIOError(f"{folder}: the library is open for writing in another process") from None
        try:
            if not (folder / MANIFEST).exists():
                _create_empty(folder / "journal-000000.bin")  # before the manifest that lists it
                body = {"format": FORMAT, "version": VERSION, "identity": dict(identity), "layout": None, "shards": [],
                        "removed": [], "next_id": 0, "next_file": 1, "journal": "journal-000000.bin"}  # fmt: skip
                _write_manifest(folder, body)
            contents, valid = read_library(folder, identity, verify)
            body = _read_manifest(folder)
            _remove_unlisted(folder, body, leftovers=True)
            journal = folder / body["journal"]
            if journal.exists() and journal.stat().st_size != valid:
                logger.warning("%s: dropping an incomplete record at byte %d (an append that never returned)",
                               journal, valid)  # fmt: skip
                os.truncate(journal, valid)
            return cls(folder, lock, body, contents.journal_rows, shard_size), contents
        except BaseException:
            lock.close()
            raise

    def close(self) -> None:
        """Release the folder (another process may then open it for writing)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
            self._lock.close()

    # ------------------------------------------------------------------ commits
    def append(self, ids: Tensor, keys: Tensor, columns: dict[str, Tensor]) -> None:
        """Commit experts durably: their journal records are written and fsynced before this returns.

        Args:
            ids: ``(n,)`` their ids, above every id stored so far; keys: ``(n, 16)`` uint8 digests.
            columns: the factors ``psi, phi, U, V`` with ``n`` rows, in the library's dtype.
        """
        journal = self._writable()
        if self.layout is None:  # the first expert fixes dtype and shapes
            self.layout = Shapes(columns["U"].dtype, {name: tuple(columns[name].shape[1:]) for name in FACTORS})
            self._commit({**self._body, "layout": self.layout.as_json()})
            journal = self._writable()
        journal.write(b"".join(_record(_ADD, _add_payload(ids, keys, columns, row)) for row in range(len(ids))))
        journal.flush()
        os.fsync(journal.fileno())
        self._journal_rows += len(ids)
        if self._journal_rows >= self.shard_size:
            self.seal()

    def remove(self, expert_id: int) -> None:
        """Commit the removal of one expert durably (a journal record; sealed shards are never rewritten)."""
        journal = self._writable()
        journal.write(_record(_REMOVE, struct.pack("<q", expert_id)))
        journal.flush()
        os.fsync(journal.fileno())

    def seal(self) -> None:
        """Move the journal's experts into a new shard and start a new journal; one manifest write commits both."""
        if self.layout is None:
            return
        records, _ = _replay(self.folder / self._body["journal"], self.layout)
        segment, removes = _journal_segment(records, self.layout)
        body = dict(self._body)
        if len(segment["ids"]):
            body["shards"] = [*body["shards"], self._write_shard(segment, body)]
            body["next_id"] = int(segment["ids"][-1]) + 1
        body["removed"] = sorted(set(body["removed"]) | set(removes))
        body["journal"], body["next_file"] = f"journal-{body['next_file']:06d}.bin", body["next_file"] + 1
        self._commit(body)

    def replace_all(self, segment: dict[str, Tensor] | None, removed: set[int], next_id: int) -> None:
        """Durably make the folder hold exactly ``segment`` (everything, for a reset or a snapshot)."""
        body = {**self._body, "shards": [], "removed": sorted(removed), "next_id": next_id}
        if segment is not None and len(segment["ids"]):
            self.layout = Shapes(segment["U"].dtype, {name: tuple(segment[name].shape[1:]) for name in FACTORS})
            body["layout"] = self.layout.as_json()
            for start in range(0, len(segment["ids"]), self.shard_size):
                part = {name: t[start : start + self.shard_size] for name, t in segment.items()}
                body["shards"].append(self._write_shard(part, body))
        body["journal"], body["next_file"] = f"journal-{body['next_file']:06d}.bin", body["next_file"] + 1
        self._commit(body)

    # ------------------------------------------------------------------ internals
    def _write_shard(self, segment: dict[str, Tensor], body: dict[str, Any]) -> dict[str, Any]:
        """Write one shard durably (numbered from ``body['next_file']``, which it advances); its manifest entry."""
        name = f"shard-{body['next_file']:06d}.safetensors"
        body["next_file"] += 1
        ordered = {key: segment[key] for key in ("ids", *FACTORS, "key")}  # 8-byte items first: aligned offsets
        size, sha = _write_atomically(self.folder / name, safetensors_chunks(ordered, {"format": FORMAT}))
        ids = segment["ids"]
        return {"file": name, "experts": len(ids), "first_id": int(ids[0]), "last_id": int(ids[-1]),
                "bytes": size, "sha256": sha}  # fmt: skip

    def _commit(self, body: dict[str, Any]) -> None:
        """Replace the manifest (the commit point), then delete what it no longer lists and reopen its journal."""
        self._writable()
        if body["journal"] != self._body["journal"]:
            _create_empty(self.folder / body["journal"])  # a journal exists before a manifest lists it
        _write_manifest(self.folder, body)
        old_journal, self._body = self._body["journal"], body
        self._journal.close()
        self._journal = None
        _remove_unlisted(self.folder, body)
        self._open_journal()
        if body["journal"] != old_journal:
            self._journal_rows = 0

    def _open_journal(self) -> None:
        self._journal = open(self.folder / self._body["journal"], "ab")  # noqa: SIM115 (held open for appends)
        _fsync_dir(self.folder)

    def _writable(self) -> BinaryIO:
        if self._journal is None:
            raise RuntimeError(f"{self.folder}: the library store is closed")
        return self._journal


def _create_empty(path: Path) -> None:
    with open(path, "wb") as f:
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _remove_unlisted(folder: Path, body: dict[str, Any], leftovers: bool = False) -> None:
    """Delete shards, journals and temporary files the manifest does not list: replaced by a commit, or (``leftovers``,
    when a folder is opened) left by a crash mid-commit, which is logged."""
    listed = {entry["file"] for entry in body["shards"]} | {body["journal"]}
    for path in folder.iterdir():
        ours = path.name.startswith(("shard-", "journal-")) or path.name.endswith(".tmp")
        if ours and path.name not in listed:
            log = logger.warning if leftovers else logger.debug
            log("%s: removing %s, which the manifest does not list", folder, path.name)
            path.unlink()
