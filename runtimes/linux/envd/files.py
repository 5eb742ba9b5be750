"""`/files`: streamed downloads (GET) and uploads (POST multipart/form-data or octet-stream), as the SDK uses them."""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
import zlib
from collections.abc import AsyncIterator

from .entries import METADATA_PREFIX, UPLOAD_SUFFIX, resolve_path, write_info
from .http import HttpError, Request, Response
from .multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart, boundary_of, disposition_params
from .state import State
from .users import User

READ_SIZE = 64 * 1024
INFLATE_STEP = 1024 * 1024
METADATA_HEADER = "x-metadata-"


def _http_error(e: OSError, path: str) -> HttpError:
    status = {
        errno.ENOENT: 404,
        errno.EACCES: 403,
        errno.EPERM: 403,
        errno.ENOSPC: 507,
        errno.EDQUOT: 507,
        errno.ENOTDIR: 400,
        errno.EISDIR: 400,
    }.get(e.errno or 0, 500)
    return HttpError(status, f"{path}: {e.strerror}")


class _Upload:
    """One file being written: into a temporary file beside the target, renamed into place when complete."""

    def __init__(self, path: str, user: User) -> None:
        self.path = path
        self.user = user
        parent = os.path.dirname(path)
        _make_parents(parent, user)
        if os.path.isdir(path):
            raise HttpError(400, f"{path} is a directory")
        import tempfile  # on first use: it pulls in random and hashlib (idle memory)

        fd, self.temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=UPLOAD_SUFFIX, dir=parent)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self, metadata: dict[str, str]) -> None:
        self.file.close()
        try:
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
        except OSError:
            mode = 0o644 & ~_umask()
        os.chmod(self.temp, mode)
        if os.geteuid() == 0 and self.user.uid != 0:
            os.chown(self.temp, self.user.uid, self.user.gid)
        for key, value in metadata.items():
            os.setxattr(self.temp, METADATA_PREFIX + key, value.encode())
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parents(parent: str, user: User) -> None:
    missing = []
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory)
        if os.geteuid() == 0 and user.uid != 0:
            os.chown(directory, user.uid, user.gid)


async def _inflate(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, header detected
    try:
        async for piece in pieces:
            data = piece
            while data:
                out = inflater.decompress(data, INFLATE_STEP)
                data = inflater.unconsumed_tail
                if out:
                    yield out
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error as e:
        raise HttpError(400, f"malformed gzip body: {e}") from None


class FilesEndpoint:
    """GET and POST `/files`."""

    def __init__(self, state: State) -> None:
        self.state = state

    def _user(self, request: Request) -> User:
        name = request.query.get("username")
        headers = dict(request.headers)
        if name:
            headers["authorization"] = "Basic " + base64.b64encode(f"{name}:".encode()).decode()
        return self.state.user_for(headers)

    async def handle(self, request: Request, response: Response) -> None:
        """Serve one `/files` request."""
        if request.method in ("GET", "HEAD"):
            await self.download(request, response)
        elif request.method == "POST":
            await self.upload(request, response)
        else:
            raise HttpError(405, "method not allowed")

    async def download(self, request: Request, response: Response) -> None:
        """Stream a file's bytes, gzip-compressed when the client accepts it."""
        user = self._user(request)
        path = resolve_path(request.query.get("path", ""), user.home) if request.query.get("path") else ""
        if not path:
            raise HttpError(400, "the path parameter is required")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _http_error(e, path) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise HttpError(400, f"{path} is a directory")
            gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
            name = os.path.basename(path).replace('"', "%22")
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Disposition", f'attachment; filename="{name}"'),
            ]
            if gzip:
                headers.append(("Content-Encoding", "gzip"))
                await response.start(200, headers)
                compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
                while chunk := f.read(READ_SIZE):
                    await response.write(compressor.compress(chunk))
                await response.write(compressor.flush())
            else:
                # Zero-sized regular files may still have content (/proc): stream those chunked.
                length = st.st_size if stat.S_ISREG(st.st_mode) and st.st_size else None
                await response.start(200, headers, length)
                sent = 0
                while chunk := f.read(READ_SIZE if length is None else min(READ_SIZE, length - sent)):
                    await response.write(chunk)
                    sent += len(chunk)
                if length is not None and sent < length:
                    return  # the file shrank under us: unfinished, so the connection is closed
            await response.finish()

    def _metadata(self, request: Request) -> dict[str, str]:
        return {
            name[len(METADATA_HEADER) :].lower(): value
            for name, value in request.headers.items()
            if name.startswith(METADATA_HEADER)
        }

    async def upload(self, request: Request, response: Response) -> None:
        """Write one (octet-stream) or several (multipart) files; answer with their WriteInfo list."""
        user = self._user(request)
        metadata = self._metadata(request)
        content_type = request.headers.get("content-type", "")
        body = request.stream()
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "x-gzip"):
            body = _inflate(body)
        elif encoding not in ("", "identity"):
            raise HttpError(415, f"unsupported content-encoding {encoding!r}")
        query_path = request.query.get("path")
        if content_type.lower().startswith("multipart/form-data"):
            written = await self._multipart(body, content_type, query_path, user, metadata)
        else:
            if not query_path:
                raise HttpError(400, "the path parameter is required")
            path = resolve_path(query_path, user.home)
            await self._write(path, user, body, metadata)
            written = [path]
        await response.send_json(200, [write_info(path, metadata) for path in written])

    async def _write(self, path: str, user: User, pieces: AsyncIterator[bytes], metadata: dict[str, str]) -> None:
        try:
            upload = _Upload(path, user)
        except OSError as e:
            raise _http_error(e, path) from None
        try:
            async for piece in pieces:
                upload.write(piece)
            upload.commit(metadata)
        except OSError as e:
            upload.abort()
            raise _http_error(e, path) from None
        except BaseException:
            upload.abort()
            raise

    async def _multipart(
        self,
        body: AsyncIterator[bytes],
        content_type: str,
        query_path: str | None,
        user: User,
        metadata: dict[str, str],
    ) -> list[str]:
        try:
            parser = MultipartParser(boundary_of(content_type))
        except MultipartError as e:
            raise HttpError(400, str(e)) from None
        written: list[str] = []
        current: _Upload | None = None
        try:
            async for piece in body:
                try:
                    events = parser.feed(piece)
                except MultipartError as e:
                    raise HttpError(400, str(e)) from None
                for event in events:
                    if isinstance(event, PartStart):
                        params = disposition_params(event.headers.get("content-disposition", ""))
                        name = query_path if query_path and not written else params.get("filename")
                        if not name:
                            raise HttpError(400, "a file part needs a filename or the path parameter")
                        path = resolve_path(name, user.home)
                        try:
                            current = _Upload(path, user)
                        except OSError as e:
                            raise _http_error(e, path) from None
                    elif isinstance(event, PartData) and current is not None:
                        current.write(event.data)
                    elif isinstance(event, PartEnd) and current is not None:
                        current.commit(metadata)
                        written.append(current.path)
                        current = None
            parser.close()
        except MultipartError as e:
            raise HttpError(400, str(e)) from None
        except OSError as e:
            raise _http_error(e, current.path if current else "upload") from None
        finally:
            if current is not None:
                current.abort()
        if not written:
            raise HttpError(400, "no file in the multipart body")
        return written
