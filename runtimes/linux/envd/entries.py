"""E2B's EntryInfo for a path, in proto3 JSON, and the path/error conventions the filesystem calls share."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

from .connect import ConnectError, Message
from .protobin import format_timestamp

METADATA_PREFIX = "user.e2b."
# Uploads land in a hidden temporary file with this suffix first; watchers leave such files out.
UPLOAD_SUFFIX = ".soulbox-upload"


def resolve_path(path: str, home: str) -> str:
    """Relative paths and `~` are taken from the user's home."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    if not os.path.isabs(path):
        path = os.path.join(home, path)
    return os.path.normpath(path)


def os_error(e: OSError, path: str) -> ConnectError:
    """The Connect error for a failed filesystem call."""
    code = {
        errno.ENOENT: "not_found",
        errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied",
        errno.EEXIST: "already_exists",
        errno.ENOTDIR: "invalid_argument",
        errno.EISDIR: "invalid_argument",
        errno.ENOTEMPTY: "failed_precondition",
        errno.ENOSPC: "resource_exhausted",
    }.get(e.errno or 0, "internal")
    return ConnectError(code, f"{path}: {e.strerror}")


def _name(lookup: object, ident: int) -> str:
    try:
        return str(lookup(ident).pw_name if lookup is pwd.getpwuid else lookup(ident).gr_name)  # type: ignore[operator]
    except (KeyError, OverflowError):
        return str(ident)


def timestamp(seconds_ns: int) -> str:
    """An mtime in nanoseconds as proto3 JSON writes google.protobuf.Timestamp."""
    return format_timestamp(*divmod(seconds_ns, 1_000_000_000))


def read_metadata(path: str) -> dict[str, str]:
    """The file's `user.e2b.*` extended attributes."""
    out: dict[str, str] = {}
    try:
        for name in os.listxattr(path):
            if name.startswith(METADATA_PREFIX):
                out[name[len(METADATA_PREFIX) :]] = os.getxattr(path, name).decode("utf-8", "replace")
    except OSError:
        pass
    return out


def file_type(mode: int) -> str:
    """The proto FileType name."""
    if stat.S_ISDIR(mode):
        return "FILE_TYPE_DIRECTORY"
    if stat.S_ISLNK(mode):
        return "FILE_TYPE_SYMLINK"
    return "FILE_TYPE_FILE"


def entry_info(path: str) -> Message:
    """EntryInfo of `path` (not following a final symlink for the link's own facts)."""
    st = os.lstat(path)
    entry: Message = {
        "name": os.path.basename(path) or "/",
        "path": path,
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
    }
    target_st = st
    if stat.S_ISLNK(st.st_mode):
        entry["isSymlink"] = True
        entry["symlinkTarget"] = os.path.realpath(path)
        try:
            target_st = os.stat(path)
        except OSError:
            target_st = st
    entry["type"] = file_type(target_st.st_mode) if target_st is not st else file_type(st.st_mode)
    if stat.S_ISLNK(target_st.st_mode):
        entry["type"] = "FILE_TYPE_FILE"  # a dangling link: report it as a file-like entry
    entry["size"] = str(target_st.st_size)
    entry["mode"] = stat.S_IMODE(target_st.st_mode)
    entry["permissions"] = stat.filemode(target_st.st_mode)
    entry["modifiedTime"] = timestamp(target_st.st_mtime_ns)
    metadata = read_metadata(path)
    if metadata:
        entry["metadata"] = metadata
    return entry


def write_info(path: str, metadata: dict[str, str]) -> Message:
    """The `/files` upload answer for one file: name, type ("file"/"dir"), path, metadata."""
    info: Message = {"name": os.path.basename(path), "type": "dir" if os.path.isdir(path) else "file", "path": path}
    if metadata:
        info["metadata"] = metadata
    return info
