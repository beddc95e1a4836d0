"""Logging setup: structlog to stderr, JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from overlay.core.text import printable


def configure(level: str = "info", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    for noisy in ("kademlia", "rpcudp", "aiohttp.access", "quic"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            *([] if json else [_escape_controls]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _escape_controls(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """On a terminal, text values (peer-supplied ones among them) are printed with control
    characters escaped (JSON lines escape them anyway)."""
    return {k: printable(v) if isinstance(v, str) and k != "exception" else v
            for k, v in event.items()}


def get_logger(module: str, **context: object) -> structlog.typing.FilteringBoundLogger:
    """The logger of one module: pass ``__name__``; every line carries ``module=<name>``.

    Bind per session or peer with ``.bind(peer=..., session=...)`` so that each line says
    whose it is.
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(
        module, module=module, **context
    )
    return logger
