"""A file response over a file that was opened before responding.

Starlette's FileResponse opens its path only when the body is sent, after the 200 went out,
so a cleanup that removed the file in between dropped the connection mid-download. Here the
route opens the file first (a missing one is a 404) and the body is read from that open
file: on POSIX an unlinked file stays readable while it is open, so a download that started
completes. Ranges, HEAD and the validators work as in FileResponse.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import anyio
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send


class OpenFileResponse(FileResponse):
    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        self._file = file
        super().__init__(file.name, stat_result=os.fstat(file.fileno()), **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Never hand the path to the server (pathsend): the path may be gone already.
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if "pathsend" not in k}
        try:
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self._file.close()

    @contextlib.asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        # The file is closed once, by __call__, after every range was sent.
        yield anyio.wrap_file(self._file)
