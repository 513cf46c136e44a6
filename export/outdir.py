"""The output folder: checked before work starts, artifacts installed only once verified.

Artifacts are written into a hidden staging folder inside ``--out`` (same file
system) and verified there. Only when every artifact is done does the export
*commit*: each verified artifact is moved into place with ``os.replace`` (a reader
sees the previous artifact or the new one, never a half-written one; a folder
artifact such as ``saved_model/`` replaces its predecessor by two renames), then
``manifest.json`` is replaced last. A process killed before the commit leaves the
previous export untouched; the next export into the folder removes the dead
staging folder (restoring a ``saved_model/`` caught between its two renames).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from export.artifacts import ARTIFACTS
from export.report import MANIFEST_KIND
from sila_keras.utils.errors import RunDirError
from sila_keras.utils.rundir import RunDir

MANIFEST = "manifest.json"
LABELS = RunDir.LABELS
STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


def prepare_out_dir(out_dir) -> Path:
    """Create ``out_dir`` and prove it is writable; refuse a folder with foreign artifacts.

    Raises:
        PermissionError: the folder cannot be created or written.
        ValueError: it holds artifact-named files but no export manifest (e.g. a run
            directory, whose ``model.keras`` would be overwritten).
    """
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(
            f"Cannot write to the output folder '{out}' ({e.strerror or type(e).__name__}). "
            f"Pass a writable --out DIR. Received: out={str(out_dir)!r}"
        ) from None
    recover(out)
    foreign = [s.file for s in ARTIFACTS.values() if (out / s.file).exists()]
    if foreign and not previous_manifest(out):
        raise RunDirError(
            f"The output folder '{out}' holds {', '.join(foreign)} but no {MANIFEST} from an earlier "
            f"export; writing there would overwrite them. Pass an empty or new --out DIR. "
            f"Received: out={str(out_dir)!r}"
        )
    return out


def recover(out: Path) -> list[str]:
    """Clean up after an export that was killed: put back any folder artifact caught
    between the two renames of its swap, delete staging folders and temp files.

    Returns what was restored (names), for tests and messages.
    """
    restored = []
    for staging in sorted(out.glob(f"{STAGING_PREFIX}*")):
        for old in staging.glob(f"{OLD_PREFIX}*"):
            dest = out / old.name[len(OLD_PREFIX):]
            if not dest.exists():
                os.replace(old, dest)
                restored.append(dest.name)
        shutil.rmtree(staging, ignore_errors=True)
    for name in (MANIFEST, LABELS):  # temp files of sila_keras.utils.files's atomic writes
        for tmp in out.glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)
    return restored


def commit(out: Path, staging: Path, staged: dict[str, Path], failed_files, manifest: dict) -> None:
    """Install the verified artifacts, drop failed and stale ones, write labels and manifest."""
    from sila_keras.utils import files

    for file, path in staged.items():
        install(path, out / file, staging)
    for file in failed_files:  # an older artifact of the same name would now be misdescribed
        if file not in staged:
            remove(out / file)
    remove_stale(out, manifest)
    files.write_text(out / LABELS, "\n".join(manifest["class_names"]) + "\n")
    files.write_json(out / MANIFEST, manifest)


def previous_manifest(out: Path) -> dict | None:
    """The manifest of an earlier export into ``out``, if there is one."""
    from sila_keras.utils import files

    path = Path(out) / MANIFEST
    try:
        data = files.read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == MANIFEST_KIND else None


def install(src: Path, dest: Path, staging: Path) -> None:
    """Move a verified artifact into place (file: atomic replace; folder: swap)."""
    if src.is_dir():
        old = None
        if dest.exists():
            old = staging / f"{OLD_PREFIX}{dest.name}"
            os.replace(dest, old)
        os.replace(src, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(src, dest)


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def remove_stale(out_dir: Path, manifest: dict) -> None:
    """Delete artifacts an earlier export left that ``manifest`` does not list."""
    old = previous_manifest(out_dir) or {}
    keep = {a["file"] for a in manifest["artifacts"].values()}
    known = {s.file for s in ARTIFACTS.values()}
    for entry in (old.get("artifacts") or {}).values():
        name = entry.get("file") if isinstance(entry, dict) else None
        if name and name not in keep and name in known:
            remove(out_dir / name)
