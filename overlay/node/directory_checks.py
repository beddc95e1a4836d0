"""Dial-backs for the supernode directory this node holds (the asyncio adapter of
:class:`overlay.dht.directory.Directory`, which decides what to dial and when).

A dial-back is the attachment protocol's own lookup-only handshake
(:meth:`overlay.attach.adapter.ClientSession.connect`) to the record's HOST:PORT, expecting
the record's node key: the server proves the key by signing a transcript that covers this
node's fresh nonce and ephemeral key (``ServerHello``), and the session is closed at once. No
other message exists for it. It runs in the background: a ``store`` is answered before its
record is dialled, and the record is served only once proven.
"""

from __future__ import annotations

import asyncio
import time

from overlay.attach import SessionConfig
from overlay.attach.adapter import ClientSession, SessionError
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.dht.directory import DialBack, Directory

log = get_logger(__name__)

#: the longest the loop sleeps without a timer (a new record wakes it anyway)
IDLE_WAKE_S = 60.0
#: the shortest: the dial budget refills meanwhile
MIN_WAKE_S = 0.05


class DirectoryChecks:
    def __init__(self, directory: Directory, own_host: str,
                 config: SessionConfig | None = None) -> None:
        self.directory = directory
        self.own_host = own_host
        self.config = config
        #: dial-backs use a throwaway key: they are lookup-only sessions
        self.identity = Identity.generate()
        self._wake = asyncio.Event()
        self._tasks = TaskSet()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.directory.enable_dial_backs(self.own_host)
        self.directory.on_work = self._wake.set
        self._loop_task = asyncio.create_task(self._run())

    def stop(self) -> None:
        self.directory.on_work = None
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._tasks.cancel_all()

    async def _run(self) -> None:
        while True:
            try:
                for dial in self.directory.dials_due(time.time()):
                    self._tasks.spawn(self._dial(dial))
            except Exception:  # the loop must keep running
                log.exception("directory_dial_loop_failed")
            timer = self.directory.get_timer()
            wait = IDLE_WAKE_S if timer is None else timer - time.time()
            self._wake.clear()
            try:
                async with asyncio.timeout(min(IDLE_WAKE_S, max(MIN_WAKE_S, wait))):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _dial(self, dial: DialBack) -> None:
        proven = False
        try:
            session = await ClientSession.connect(
                dial.host, dial.port, self.identity, expected_node_key=dial.node_key,
                lookup_only=True, config=self.config,
                timeout=self.directory.limits.dial_timeout_s)
        except SessionError as exc:
            log.debug("directory_dial_back_failed", address=f"{dial.host}:{dial.port}",
                     node_key=dial.node_key.hex()[:16], error=str(exc)[:200])
        else:
            proven = session.node_key == dial.node_key
            session.close("dial-back done")
        finally:
            self.directory.dial_done(dial, proven, time.time())
            self._wake.set()
