"""What every service of envd shares: settings from the command line, default env, the process table."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .processes import ProcessTable
from .users import User, resolve, username_from


@dataclass
class State:
    """envd's configuration and live state."""

    user: str = "user"
    home: str = "/home/user"
    access_token: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    processes: ProcessTable = field(default_factory=ProcessTable)

    def user_for(self, headers: dict[str, str]) -> User:
        """The account a request acts as."""
        name = username_from(headers, self.user)
        user = resolve(name, self.home)
        if name == self.user or not os.path.isdir(user.home):
            return User(user.name, user.uid, user.gid, user.groups, self.home, user.shell)
        return user

    def environment(self, user: User, extra: dict[str, str]) -> dict[str, str]:
        """A process's environment: the basics, envd's defaults, then the request's own."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": user.shell or "/bin/bash",
        }
        env.update(self.envs)
        env.update(extra)
        return env
