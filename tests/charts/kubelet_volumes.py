"""What the kubelet does to a volume's files when it mounts it for a pod with ``fsGroup``.

A port of kubelet's volume ownership management (``pkg/volume/volume_linux.go``,
``SetVolumeOwnership``), for volume types that support it (local PVs, most
cloud block volumes; not kind's hostPath):

- every file and directory gets the group ``fsGroup`` and the mode bits
  ``rw`` for the group (directories also ``x`` and setgid), *added* to what it had;
- ``fsGroupChangePolicy: Always`` (the default) does it at every mount;
  ``OnRootMismatch`` only when the volume's root does not have the group and the
  bits yet (``requiresPermissionChange``): after the first mount, never again;
- Secret volumes get it too (read-only: ``r`` for the group), at every mount.

Chowning to another group needs root, which the tests have; the mode bits,
which are what servers check, are applied either way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

RW = 0o660
RO = 0o440
EXEC = 0o110


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for directory, names, files in os.walk(root):
        for name in [*names, *files]:
            yield Path(directory) / name


def _chgrp(path: Path, group: int) -> None:
    if os.geteuid() == 0:
        os.lchown(path, -1, group)


def requires_change(root: Path, group: int) -> bool:
    """kubelet's ``requiresPermissionChange`` for a read-write volume."""
    info = root.stat()
    if os.geteuid() == 0 and info.st_gid != group:
        return True
    if not stat.S_ISDIR(info.st_mode):
        return True
    wanted = RW | EXEC
    return (stat.S_IMODE(info.st_mode) & wanted) != wanted or not info.st_mode & stat.S_ISGID


def mount(root: Path, pod_security: Mapping[str, object]) -> bool:
    """Mount a read-write volume for a pod: whether the kubelet changed its files."""
    group = pod_security.get("fsGroup")
    if group is None:
        return False
    policy = pod_security.get("fsGroupChangePolicy", "Always")
    if policy == "OnRootMismatch" and not requires_change(root, int(str(group))):
        return False
    for path in _walk(root):
        _chgrp(path, int(str(group)))
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        mask = RW | (stat.S_ISGID | EXEC if stat.S_ISDIR(mode) else 0)
        path.chmod(stat.S_IMODE(mode) | mask)
    return True


def secret_volume(
    root: Path, files: Mapping[str, str], default_mode: int, pod_security: Mapping[str, object]
) -> None:
    """A Secret volume as the kubelet writes it: the files, ``defaultMode``, then fsGroup."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if path.exists():
            path.chmod(0o600)
        path.write_text(content)
        mode = default_mode
        group = pod_security.get("fsGroup")
        if group is not None:
            _chgrp(path, int(str(group)))
            mode |= RO
        path.chmod(mode)
