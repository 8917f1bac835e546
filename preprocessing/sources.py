"""Turning SRC arguments (files, folders, globs, .txt lists, s3:// prefixes) into scans with stable ids.

scan_id rule: the source path relative to its input root, without the .nii/.nii.gz suffix, with
path separators replaced by "__" and any character outside [A-Za-z0-9._-] replaced by "_".
The input root is the folder (or s3:// prefix) given as SRC; for a single file it is the file's
folder; for a glob it is the folder before the first wildcard. When several inputs map to the same
id, each of them gets "-" and the first 8 hex digits of the SHA-1 of its full source appended.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec

from slicesr.nifti import is_nifti_name, strip_nifti_suffix
from slicesr.store import is_remote

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_WILDCARDS = set("*?[")


@dataclass(frozen=True)
class SourceScan:
    """One input scan: where to read it, its id, and a fingerprint to tell if it changed."""

    uri: str
    scan_id: str
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Expansion:
    scans: list[SourceScan]
    problems: list[dict[str, str]]  # SRC arguments that matched nothing or could not be read


_HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


def strip_hash_suffix(scan_id: str) -> str:
    return _HASH_SUFFIX.sub("", scan_id)


def make_scan_id(relative_path: str) -> str:
    relative = strip_nifti_suffix(relative_path.replace("\\", "/").strip("/"))
    parts = [_UNSAFE.sub("_", part) for part in relative.split("/") if part not in ("", ".")]
    scan_id = "__".join(parts)
    return scan_id if scan_id and not scan_id.startswith(".") else "scan_" + scan_id


def local_uri(path: str) -> str:
    """A local file's source: its absolute path with symbolic links resolved, so that one file reached
    through another folder (a symlinked checkout, a second mount of the same data) is one scan, not a second
    one under a hash-suffixed id (which would put the same scan in both the training and validation split)."""
    return os.path.realpath(path)


def _local_fingerprint(path: str) -> dict[str, Any]:
    info = os.stat(path)
    return {"size": int(info.st_size), "mtime": float(info.st_mtime)}


def _remote_fingerprint(info: dict[str, Any]) -> dict[str, Any]:
    fingerprint: dict[str, Any] = {"size": int(info.get("size") or info.get("Size") or 0)}
    etag = info.get("ETag") or info.get("etag")
    if etag:
        fingerprint["etag"] = str(etag).strip('"')
    modified = info.get("LastModified") or info.get("mtime")
    if modified is not None and not etag:
        fingerprint["mtime"] = str(modified)
    return fingerprint


def _expand_remote(src: str, storage_options: dict[str, Any]) -> list[tuple[str, str, dict]]:
    fs, path = fsspec.core.url_to_fs(src, **storage_options)
    protocol = src.split("://", 1)[0]
    if fs.isfile(path):
        info = fs.info(path)
        return [(src, os.path.basename(path), _remote_fingerprint(info))]
    found = fs.find(path, detail=True)
    out = []
    for key, info in sorted(found.items()):
        if is_nifti_name(key):
            relative = key[len(path.rstrip("/")) :].lstrip("/")
            out.append((f"{protocol}://{key}", relative, _remote_fingerprint(info)))
    return out


def _expand_local(src: str) -> list[tuple[str, str, dict]]:
    if any(char in _WILDCARDS for char in src):
        parts = src.split(os.sep)
        root_parts = []
        for part in parts:
            if any(char in _WILDCARDS for char in part):
                break
            root_parts.append(part)
        root = os.sep.join(root_parts) or "."
        matches = sorted(glob.glob(src, recursive=True))
        out = []
        for match in matches:
            if os.path.isdir(match):
                out += _expand_local(match)
            elif is_nifti_name(match):
                out.append((local_uri(match), os.path.relpath(match, root), _local_fingerprint(match)))
        return out
    if os.path.isdir(src):
        out = []
        for folder, subfolders, files in os.walk(src):
            subfolders.sort()
            for name in sorted(files):
                if is_nifti_name(name) and not name.startswith("."):
                    path = os.path.join(folder, name)
                    out.append((local_uri(path), os.path.relpath(path, src), _local_fingerprint(path)))
        return out
    if os.path.isfile(src):
        return [(local_uri(src), os.path.basename(src), _local_fingerprint(src))]
    raise FileNotFoundError(src)


def read_list_file(src: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The entries of a list file (a local path or a URI): one input per line, blank lines and `#` comments
    skipped, relative entries relative to the list's folder (or prefix). Reading errors propagate as they
    are (FileNotFoundError and other OSErrors, UnicodeDecodeError): each caller words them."""
    if is_remote(src):
        with fsspec.open(src, "rt", **(storage_options or {})) as handle:
            text = handle.read()
        base = src.rsplit("/", 1)[0]
    else:
        with open(src, encoding="utf-8") as handle:
            text = handle.read()
        base = os.path.dirname(os.path.abspath(src))
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not is_remote(line) and not os.path.isabs(line):
            line = f"{base.rstrip('/')}/{line}" if is_remote(base) else os.path.join(base, line)
        entries.append(line)
    return entries


def expand_sources(srcs: list[str], storage_options: dict[str, Any] | None = None) -> Expansion:
    """Find every NIfTI scan named by `srcs` and give each a unique, stable scan_id."""
    storage_options = dict(storage_options or {})
    found: list[tuple[str, str, dict]] = []
    problems: list[dict[str, str]] = []
    pending = list(srcs)
    while pending:
        src = pending.pop(0)
        try:
            if src.lower().endswith(".txt"):
                pending = read_list_file(src, storage_options) + pending
                continue
            matches = _expand_remote(src, storage_options) if is_remote(src) else _expand_local(src)
        except FileNotFoundError:
            problems.append({"source": src, "error": "no such file, folder or object"})
            continue
        except PermissionError as exc:
            problems.append({"source": src, "error": f"access denied: {exc}"})
            continue
        except OSError as exc:
            problems.append({"source": src, "error": f"cannot list input: {exc}"})
            continue
        if not matches:
            problems.append({"source": src, "error": "matched no .nii or .nii.gz files"})
        found += matches

    unique: dict[str, tuple[str, dict]] = {}
    for uri, relative, fingerprint in found:
        unique.setdefault(uri, (relative, fingerprint))  # the same file named twice is one scan
    by_id: dict[str, list[str]] = {}
    for uri, (relative, _) in unique.items():
        by_id.setdefault(make_scan_id(relative), []).append(uri)
    scans = []
    for scan_id, uris in by_id.items():
        for uri in uris:
            final_id = scan_id
            if len(uris) > 1:
                final_id = f"{scan_id}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"
            scans.append(SourceScan(uri=uri, scan_id=final_id, fingerprint=unique[uri][1]))
    scans.sort(key=lambda scan: scan.scan_id)
    return Expansion(scans=scans, problems=problems)
