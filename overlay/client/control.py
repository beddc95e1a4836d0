"""The client daemon's control socket: a Unix stream socket speaking JSON lines.

Each request is one line holding one JSON object with a ``"cmd"`` string and the command's
parameters; each answer is one line holding ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. An ``"id"`` (string or integer) in a request is echoed.
The protocol is strict: a line longer than :data:`MAX_LINE_BYTES` gets an error and the
connection is closed; not-JSON, a non-object, an unknown command, an unknown parameter or a
parameter of the wrong type gets an error (the connection stays usable).

Commands are registered with :meth:`ControlServer.register` (name, parameter types,
handler), so later work can add commands (``send``, ...) without touching the server.

The socket file is created with mode 0600 (only the daemon's user may use it); a stale
socket left by a crashed daemon is replaced, a live one or a non-socket file is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.client.errors import ClientError
from overlay.core.logs import get_logger

log = get_logger(__name__)

MAX_LINE_BYTES = 64 * 1024
MAX_CONNECTIONS = 16
REQUEST_TIMEOUT_S = 30.0
#: sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL
MAX_SOCKET_PATH_BYTES = 107

JSONObject = dict[str, Any]
Handler = Callable[[JSONObject], Awaitable[JSONObject]]


class ControlError(ClientError):
    """A command failed in an expected way; the message goes back to the caller as is, with
    ``reason`` (a fixed word a program can test, e.g. ``not_accepted``) when given."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ControlSocketError(ClientError):
    """The control socket cannot be created or reached."""


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    #: parameter name -> (type or tuple of types, required)
    params: dict[str, tuple[type | tuple[type, ...], bool]]
    help: str = ""
    #: None: the server's request timeout; commands like ``send`` that legitimately run
    #: long (a large file) bound themselves and pass ``float("inf")``
    timeout_s: float | None = None


def _check_params(cmd: Command, request: JSONObject) -> JSONObject:
    args: JSONObject = {}
    for key, value in request.items():
        if key in ("cmd", "id"):
            continue
        spec = cmd.params.get(key)
        if spec is None:
            raise ControlError(f"unknown parameter {key!r} for {cmd.name!r}")
        types = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
        if isinstance(value, bool) and bool not in types:
            raise ControlError(f"parameter {key!r} has the wrong type")
        if not isinstance(value, types):
            raise ControlError(f"parameter {key!r} has the wrong type")
        args[key] = value
    for key, (_, required) in cmd.params.items():
        if required and key not in args:
            raise ControlError(f"{cmd.name!r} needs parameter {key!r}")
    return args


class ControlServer:
    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.commands: dict[str, Command] = {}
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None
        self.register("help", self._help, {}, "list the commands")

    def register(
        self,
        name: str,
        handler: Handler,
        params: dict[str, tuple[type | tuple[type, ...], bool]] | None = None,
        help: str = "",
        timeout_s: float | None = None,
    ) -> None:
        """Add a command. ``handler(args)`` returns the answer's fields (``ok`` is added);
        it raises :class:`ControlError` for an error the caller should see."""
        if name in self.commands:
            raise ValueError(f"command {name!r} is already registered")
        self.commands[name] = Command(name, handler, dict(params or {}), help, timeout_s)

    async def _help(self, args: JSONObject) -> JSONObject:
        return {"commands": {
            c.name: {"params": {p: {"required": req} for p, (_, req) in c.params.items()},
                     "help": c.help}
            for c in self.commands.values()
        }}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH_BYTES:
            raise ControlSocketError(
                f"control socket path {self.path} is longer than {MAX_SOCKET_PATH_BYTES} bytes"
            )
        self._remove_stale()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=self.max_line_bytes + 1
            )
        except OSError as exc:
            raise ControlSocketError(f"cannot listen on {self.path}: {exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = self.path.stat()
        self._inode = (st.st_dev, st.st_ino)
        log.info("control_listening", path=str(self.path))

    def _remove_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # nobody listens: left by a daemon that died
            return
        finally:
            probe.close()
        raise ControlSocketError(f"another process is listening on {self.path}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        # remove the socket file only if it is still ours
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if self._inode == (st.st_dev, st.st_ino):
                self.path.unlink()

    # -- serving ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:
            await self._reply(writer, {"ok": False, "error": "too many control connections"})
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await self._reply(writer, await self.handle_line(exc.partial))
                    return
                except asyncio.LimitOverrunError:
                    await self._reply(writer, {
                        "ok": False,
                        "error": f"request line exceeds {self.max_line_bytes} bytes",
                    })
                    return
                if len(line) > self.max_line_bytes + 1:
                    await self._reply(writer, {
                        "ok": False,
                        "error": f"request line exceeds {self.max_line_bytes} bytes",
                    })
                    return
                if not line.strip():
                    continue
                await self._reply(writer, await self.handle_line(line))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reply(self, writer: asyncio.StreamWriter, answer: JSONObject) -> None:
        writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    async def handle_line(self, line: bytes) -> JSONObject:
        """One request line -> one answer object (never raises)."""
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return {"ok": False, "error": "a request is one JSON object per line"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}
        ident = request.get("id")
        if ident is not None and (
            isinstance(ident, bool) or not isinstance(ident, str | int)
            or (isinstance(ident, str) and len(ident) > 128)
        ):
            return {"ok": False, "error": "id must be a short string or an integer"}
        answer = await self._dispatch(request)
        if ident is not None:
            answer["id"] = ident
        return answer

    async def _dispatch(self, request: JSONObject) -> JSONObject:
        name = request.get("cmd")
        if not isinstance(name, str):
            return {"ok": False, "error": "a request needs a \"cmd\" string"}
        cmd = self.commands.get(name)
        if cmd is None:
            return {"ok": False, "error": f"unknown command {name[:64]!r}",
                    "commands": sorted(self.commands)}
        try:
            args = _check_params(cmd, request)
            limit = self.request_timeout_s if cmd.timeout_s is None else cmd.timeout_s
            async with asyncio.timeout(None if limit == float("inf") else limit):
                result = await cmd.handler(args)
        except ControlError as exc:
            failed: JSONObject = {"ok": False, "error": str(exc)}
            if exc.reason is not None:
                failed["reason"] = exc.reason
            return failed
        except TimeoutError:
            return {"ok": False, "error": f"{name} took longer than {limit:g}s"}
        except Exception as exc:
            log.exception("control_command_failed", cmd=name)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        return {"ok": True, **result}


# --- clients --------------------------------------------------------------------------------


def _parse_answer(line: bytes) -> JSONObject:
    if not line.endswith(b"\n"):
        raise ControlSocketError("the daemon closed the control connection without answering")
    answer = json.loads(line)
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlSocketError("the daemon's answer is not a control answer")
    return answer


def control_request(path: str | Path, obj: JSONObject, timeout: float = 5.0) -> JSONObject:
    """Send one request to a daemon's control socket and return its answer (blocking)."""
    data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(data)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 16 * MAX_LINE_BYTES:
                    raise ControlSocketError("the daemon's answer is too large")
        except OSError as exc:
            raise ControlSocketError(f"control socket {path}: {exc}") from None
    return _parse_answer(bytes(buf))


async def control_request_async(
    path: str | Path, obj: JSONObject, timeout: float = 5.0
) -> JSONObject:
    """:func:`control_request` for code running in an event loop."""
    data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(
                str(path), limit=16 * MAX_LINE_BYTES
            )
            try:
                writer.write(data)
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise ControlSocketError(f"control socket {path}: {exc or 'timeout'}") from None
    return _parse_answer(line)
