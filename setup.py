"""The one compiled part: the datagram relay's fast path (overlay/relay/_forwarder.c).

Optional: without a C compiler and Python's headers the package installs without it, and the
datagram relay forwards every datagram through its Python core
(``overlay supernode`` logs ``relay_udp_fast_path`` either way). Everything else is in
pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("overlay.relay._forwarder", ["overlay/relay/_forwarder.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra"],
                             optional=True)])
