"""Directory trees deeper than PATH_MAX allows to name, built and removed without recursion.

Every operation is relative to a directory descriptor with one-component names, so neither
the path length nor Python's recursion limit is involved (``shutil.rmtree`` on Python 3.11
recurses once per level).
"""

from __future__ import annotations

import os
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def build_deep_tree(top: Path, levels: int, name: str = "d") -> None:
    """``top/d/d/.../d`` with ``levels`` nested directories (``top`` must exist)."""
    fd = os.open(top, _DIR)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def remove_deep_tree(top: Path, name: str = "d") -> int:
    """Remove a chain built by :func:`build_deep_tree`; returns the levels removed.

    One level per step and constant descriptors: ``d/d`` is moved up beside ``d``, the
    now-empty ``d`` removed, and the moved directory renamed back to ``d``.
    """
    fd = os.open(top, _DIR)
    spare = name + ".up"
    removed = 0
    try:
        while True:
            try:
                os.rename(f"{name}/{name}", spare, src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                break
            os.rmdir(name, dir_fd=fd)
            os.rename(spare, name, src_dir_fd=fd, dst_dir_fd=fd)
            removed += 1
        try:
            os.rmdir(name, dir_fd=fd)
            removed += 1
        except FileNotFoundError:
            pass
    finally:
        os.close(fd)
    return removed
