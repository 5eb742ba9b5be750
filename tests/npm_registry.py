"""A local npm registry for tests: it stands in for registry.npmjs.org, which is outside the machine.

Serves packuments (``GET /<name>``) and tarballs (``GET /<name>/-/<file>.tgz``) of
packages given as ``{name: {version: {path: text}}}``; ``package.json`` is made
from the name, the version and the ``manifest`` extras. Counts requests, so a
test can tell that an invoke fetched nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


@dataclass
class Package:
    files: dict[str, str]
    manifest: dict[str, Any] = field(default_factory=dict)


def _tarball(name: str, version: str, package: Package) -> bytes:
    manifest = {"name": name, "version": version, "type": "module", "main": "index.js", **package.manifest}
    members = {"package.json": json.dumps(manifest), **package.files}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class NpmRegistry:
    def __init__(self, packages: dict[str, dict[str, Package]]) -> None:
        self._packages = packages
        self._tarballs = {  # made once: a packument's integrity must match every later download
            _file(name, version): _tarball(name, version, package)
            for name, versions in packages.items()
            for version, package in versions.items()
        }
        self.requests = 0
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.requests += 1
                status, body = registry._answer(unquote(self.path))
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, path: str) -> tuple[int, bytes]:
        if "/-/" in path:
            tarball = self._tarballs.get(path)
            return (200, tarball) if tarball is not None else (404, b"{}")
        name = path.lstrip("/")
        versions = self._packages.get(name)
        if versions is None:
            return 404, b'{"error": "not found"}'
        document: dict[str, Any] = {"name": name, "dist-tags": {"latest": max(versions, key=_semver)}, "versions": {}}
        for version, package in versions.items():
            file = _file(name, version)
            data = self._tarballs[file]
            document["versions"][version] = {
                "name": name,
                "version": version,
                **package.manifest,
                "dist": {
                    "tarball": self.url.rstrip("/") + file,
                    "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                    "shasum": hashlib.sha1(data).hexdigest(),
                },
            }
        return 200, json.dumps(document).encode()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _file(name: str, version: str) -> str:
    return f"/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
