"""A sha256 manifest of a directory's files, written when the directory is saved and checked before it is read.

Orbax checksums only the shard index of its Zarr arrays, not the data, so a few overwritten bytes in a
checkpoint or a model directory would load silently. ``SHA256SUMS`` (``sha256sum`` format, relative paths)
closes that gap: ``sha256sum -c SHA256SUMS`` checks it by hand too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "SHA256SUMS"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root) -> Path:
    """Hash every file under ``root`` into ``root/SHA256SUMS``; returns its path."""
    root = Path(root)
    lines = [f"{file_sha256(p)}  {p.relative_to(root).as_posix()}" for p in _files(root)]
    out = root / MANIFEST
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    return out


def has_manifest(root) -> bool:
    return (Path(root) / MANIFEST).is_file()


def manifest_problems(root) -> list[str]:
    """What does not match ``root/SHA256SUMS`` ([] = intact): changed and missing files."""
    root = Path(root)
    recorded = {}
    for line in (root / MANIFEST).read_text().splitlines():
        digest, sep, name = line.partition("  ")
        if not sep:
            return [f"{root / MANIFEST} is malformed (line {line[:60]!r})"]
        recorded[name] = digest
    problems = []
    for name, digest in recorded.items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name} does not match its checksum (corrupt or truncated)")
    return problems
