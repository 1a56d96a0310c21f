"""Two folders of images, one per set: every image file below each folder, recursively.

Files are sorted by relative path so the same folders always give the same records (and the
same seeded samples downstream); hidden files and folders (".name") are skipped because they
are editor, OS or sync leftovers, never intended inputs. Every entry that is not used is
returned with its reason code, so that a run can account for all it listed.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from visdiff.errors import InputError, first_line
from visdiff.io import storage
from visdiff.sources.records import ImageRecord

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
HIDDEN = "hidden"  # reason codes of listed files that are not inputs
NOT_AN_IMAGE = "not_an_image"


@dataclass
class FolderListing:
    records: list[ImageRecord]
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"uri", "set", "reason"}


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _relative(path: str, root: str) -> str:
    if storage.is_remote(root):
        return path[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(path, root).replace(os.sep, "/")


def folder_name(folder: str) -> str:
    """The folder's own name ("images" for /data/images/), used as the set's display name."""
    if storage.is_remote(folder):
        return posixpath.basename(folder.rstrip("/")) or folder
    path = os.path.abspath(storage.local_path(folder))
    return os.path.basename(path) or path


def list_folder(folder: str, set_name: str, key: str) -> list[ImageRecord]:
    """Records for the image files under `folder`; InputError naming `key` when unusable."""
    return scan_folder(folder, set_name, key).records


def _name_problem(rel: str) -> str | None:
    if any(part.startswith(".") for part in rel.split("/")):
        return HIDDEN
    return None if is_image_name(rel) else NOT_AN_IMAGE


def scan_folder(folder: str, set_name: str, key: str) -> FolderListing:
    """Records for the image files under `folder`, plus every other entry with why it is not
    used (hidden, not_an_image, broken_link, link_loop, ...); InputError naming `key` when the
    folder is unusable or holds no image."""
    if not storage.exists(folder):
        raise InputError(f"{key} folder '{folder}' does not exist; pass an existing image folder")
    if not storage.is_dir(folder):
        raise InputError(
            f"{key} '{folder}' is a file, not a folder; pass the folder holding the images "
            "(or list files in data.manifest)"
        )
    # Absolute local paths: Ray workers may run in another working directory.
    remote = storage.is_remote(folder)
    root = folder if remote else os.path.abspath(storage.local_path(folder))
    try:
        listing = storage.scan_files(root, recursive=True)
    except OSError as exc:
        raise InputError(f"{key} folder '{folder}' cannot be listed: {first_line(exc)}") from None
    records = []
    odd = list(listing.skipped)
    for path in listing.files:
        rel = _relative(path, root)
        problem = _name_problem(rel)
        if problem is None:
            records.append((rel, path))
        else:
            odd.append((path, problem))
    records.sort()
    if not records:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(
            f"{key} folder '{folder}' holds no image files ({extensions}); "
            "point it at the folder that contains the images"
        )
    skipped = [{"uri": path, "set": set_name, "reason": reason} for path, reason in sorted(odd)]
    return FolderListing(
        # pair: the path inside the set folder, so that A's x/1.jpg pairs with B's x/1.jpg
        [ImageRecord(f"{set_name}/{rel}", set_name, path, pair=rel) for rel, path in records],
        skipped,
    )
