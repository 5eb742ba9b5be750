"""Who a request acts as: E2B sends `Authorization: Basic base64("<user>:")`; envd runs as that user when it can."""

from __future__ import annotations

import base64
import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    """A resolved account: ids and home for spawning processes and owning written files."""

    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    shell: str


def username_from(headers: dict[str, str], default: str) -> str:
    """The user named by the Basic authorization header, else `default`."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            name = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return default
        if name:
            return name
    return default


def resolve(name: str, default_home: str) -> User:
    """The account `name`, or envd's own identity when it does not exist (as in an unprivileged sandbox)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        uid, gid = os.geteuid(), os.getegid()
        return User(name, uid, gid, [], default_home, "/bin/bash")
    if os.geteuid() != 0:
        # Unprivileged envd cannot switch users: act as itself but keep the account's home.
        return User(name, os.geteuid(), os.getegid(), [], entry.pw_dir or default_home, entry.pw_shell)
    groups = [g for g in os.getgrouplist(name, entry.pw_gid) if g != entry.pw_gid]
    return User(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or default_home, entry.pw_shell)
