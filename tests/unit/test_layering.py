"""The package layering of ``overlay/``, checked by reading its source with :mod:`ast`.

No module of ``overlay`` is imported: :func:`scan` parses every ``.py`` file under the tree
and records every import in it, at module level and inside functions alike (an import in a
function, or under ``if TYPE_CHECKING:``, is still an edge of the design). Rules:

(a) no import cycle between modules of ``overlay/``;
(b) a module imports only from its own package or from packages of lower rank
    (:data:`PACKAGE_RANKS`, the direction documented for issue 10);
(c) nothing outside ``overlay/cli`` (and ``overlay/__main__.py``) imports ``overlay.cli``;
(d) ``kademlia``/``rpcudp`` are imported only inside ``overlay/dht``;
(e) no ``importlib`` and no ``__import__`` anywhere in ``overlay/``;
(f) the sans-IO cores (:data:`SANS_IO_MODULES`) do not import ``asyncio``.

An edge goes to the module named in the import (``from overlay.dht import node`` -> the
module ``overlay.dht.node`` when that file exists, else the package ``overlay.dht``); the
package ``__init__`` that Python also runs on the way is not counted as an edge.

The self-tests at the end run the same checker on small synthetic trees, so every rule is
shown to fail when it should.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.repo import REPO

ROOT_PACKAGE = "overlay"

#: Import direction: a module may import from its own package or from a lower rank only.
PACKAGE_RANKS: dict[str, int] = {
    "core": 0,
    "dht": 1, "attach": 1, "relay": 1,
    "media": 2, "node": 2, "call": 2,
    "client": 3,
    "cli": 4,
}

#: Modules directly in ``overlay/`` and the package they count as. ``__main__`` is the
#: ``python -m overlay`` entry point, i.e. part of the CLI.
ROOT_MODULE_PACKAGES: dict[str, str] = {"__init__": "core", "__main__": "cli"}

#: Sans-IO protocol cores, as paths relative to the repository (rule f). Other work renames
#: and splits modules: keep this list in step with the tree (a missing path fails
#: :func:`test_sans_io_modules_exist`).
SANS_IO_MODULES: tuple[str, ...] = (
    "overlay/attach/frames.py",
    "overlay/attach/schema.py",
    "overlay/attach/handshake_messages.py",
    "overlay/attach/session_messages.py",
    "overlay/attach/messages.py",
    "overlay/attach/handshake.py",
    "overlay/attach/channel.py",
    "overlay/attach/events.py",
    "overlay/attach/verification.py",
    "overlay/attach/connection.py",
    "overlay/relay/budget.py",
    "overlay/relay/protocol.py",
    "overlay/relay/admission.py",
    "overlay/relay/voucher.py",
    "overlay/dht/envelope.py",
    "overlay/dht/directory.py",
    "overlay/core/directory_keys.py",
    "overlay/node/known_supernodes.py",
    "overlay/dht/sessions.py",
    "overlay/media/punch.py",
    "overlay/media/birthday.py",
    "overlay/media/quic/core.py",
    "overlay/media/quic/congestion.py",
    "overlay/media/relay_selector.py",
    "overlay/media/relay_vouchers.py",
    "overlay/media/candidate_policy.py",
    "overlay/media/tcp_punch.py",
    "overlay/media/connect_stats.py",
    "overlay/media/direct_paths.py",
    "overlay/media/move_rules.py",
    "overlay/media/selection.py",
    "overlay/media/signalling.py",
    "overlay/media/portmap.py",
    "overlay/media/portmap_wire.py",
    "overlay/media/upnp_wire.py",
    "overlay/client/attach_policy.py",
    "overlay/client/late_refine.py",
    "overlay/core/vivaldi.py",
    "overlay/core/addresses.py",
    "overlay/core/records.py",
    "overlay/core/identity.py",
    "overlay/node/forwarded_signal.py",
    "overlay/node/signal_limits.py",
    "overlay/core/rate_limit.py",
    "overlay/node/signal_gate.py",
    "overlay/node/held_signals.py",
    "overlay/call/frames.py",
    "overlay/call/jitter.py",
    "overlay/call/quality.py",
    "overlay/call/session.py",
    "overlay/call/stream_frames.py",
    "overlay/relay/datagram.py",
    "overlay/relay/datagram_client.py",
)

#: Third-party packages only ``overlay/dht`` may import (rule d).
DHT_ONLY_IMPORTS: frozenset[str] = frozenset({"kademlia", "rpcudp"})

#: Dynamic imports hide edges from this checker (rule e).
DYNAMIC_IMPORT_MODULE = "importlib"
DYNAMIC_IMPORT_BUILTIN = "__import__"


@dataclass(frozen=True)
class Import:
    source: str   # dotted module doing the import
    target: str   # dotted module imported (resolved for relative imports)
    line: int
    in_function: bool

    def where(self) -> str:
        scope = "in a function" if self.in_function else "top level"
        return f"{self.source}:{self.line} ({scope})"


@dataclass(repr=False)
class Tree:
    """Every module under one package root and every import each one makes."""

    root: Path                      # directory that contains the package directory
    modules: dict[str, Path]        # dotted name -> file
    imports: list[Import]
    dynamic: list[str]              # "module:line what" for __import__ uses

    def __repr__(self) -> str:
        return f"Tree({self.root}: {len(self.modules)} modules, {len(self.imports)} imports)"

    def internal(self) -> list[Import]:
        return [i for i in self.imports if i.target in self.modules]

    def path_of(self, module: str) -> str:
        return self.modules[module].relative_to(self.root).as_posix()


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _resolve_relative(source: str, is_package: bool, level: int, module: str | None) -> str:
    base = source.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, source: str, is_package: bool, modules: Iterable[str]) -> None:
        self.source = source
        self.is_package = is_package
        self.modules = set(modules)
        self.depth = 0
        self.imports: list[Import] = []
        self.dynamic: list[str] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        self.imports.append(Import(self.source, target, node.lineno, self.depth > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = (_resolve_relative(self.source, self.is_package, node.level, node.module)
                if node.level else node.module or "")
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == DYNAMIC_IMPORT_BUILTIN:
            self.dynamic.append(f"{self.source}:{node.lineno} uses {DYNAMIC_IMPORT_BUILTIN}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == DYNAMIC_IMPORT_BUILTIN:
            self.dynamic.append(f"{self.source}:{node.lineno} uses .{DYNAMIC_IMPORT_BUILTIN}")
        self.generic_visit(node)


def scan(root: Path, package: str = ROOT_PACKAGE) -> Tree:
    """Parse every module of ``root/package`` (no code runs)."""
    files = sorted((root / package).rglob("*.py"))
    modules = {module_name(root, f): f for f in files}
    imports: list[Import] = []
    dynamic: list[str] = []
    for name, path in modules.items():
        visitor = _ImportVisitor(name, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += visitor.imports
        dynamic += visitor.dynamic
    return Tree(root, modules, imports, dynamic)


def _top(target: str) -> str:
    return target.split(".", 1)[0]


def _package(module: str) -> str:
    """The sub-package of ``overlay`` a module belongs to (see :data:`ROOT_MODULE_PACKAGES`
    for ``overlay/*.py``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT_MODULE_PACKAGES["__init__"]
    return ROOT_MODULE_PACKAGES.get(parts[1], parts[1]) if len(parts) == 2 else parts[1]


def _rank(module: str) -> int | None:
    return PACKAGE_RANKS.get(_package(module))


# -- the rules ---------------------------------------------------------------------------------


def find_cycles(tree: Tree) -> list[str]:
    """(a) Strongly connected groups of more than one module, and modules importing
    themselves (Tarjan's algorithm over the internal import edges)."""
    edges: dict[str, set[str]] = {m: set() for m in tree.modules}
    for imp in tree.internal():
        edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges[node]:
                groups.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return [f"import cycle: {' <-> '.join(g)}" for g in sorted(groups)]


def find_upward_imports(tree: Tree) -> list[str]:
    """(b) Imports of a package of equal or higher rank than the importer's own."""
    out: list[str] = []
    for module in tree.modules:
        if _rank(module) is None:
            out.append(f"{module}: package {_package(module)!r} has no rank in PACKAGE_RANKS")
    for imp in tree.internal():
        src_pkg, dst_pkg = _package(imp.source), _package(imp.target)
        src_rank, dst_rank = _rank(imp.source), _rank(imp.target)
        if src_pkg == dst_pkg or src_rank is None or dst_rank is None:
            continue
        if dst_rank >= src_rank:
            out.append(f"{imp.where()} imports {imp.target}: rank {dst_rank} "
                       f"({dst_pkg}) is not below rank {src_rank} ({src_pkg})")
    return out


def find_cli_imports(tree: Tree) -> list[str]:
    """(c) ``overlay.cli`` imported from outside ``overlay/cli``."""
    cli = f"{ROOT_PACKAGE}.cli"
    return [f"{imp.where()} imports {imp.target}" for imp in tree.imports
            if (imp.target == cli or imp.target.startswith(cli + "."))
            and _package(imp.source) != "cli"]


def find_dht_only_imports(tree: Tree) -> list[str]:
    """(d) ``kademlia``/``rpcudp`` imported outside ``overlay/dht``."""
    return [f"{imp.where()} imports {imp.target}" for imp in tree.imports
            if _top(imp.target) in DHT_ONLY_IMPORTS and _package(imp.source) != "dht"]


def find_dynamic_imports(tree: Tree) -> list[str]:
    """(e) ``importlib`` imported or ``__import__`` used."""
    out = [f"{imp.where()} imports {imp.target}" for imp in tree.imports
           if _top(imp.target) == DYNAMIC_IMPORT_MODULE]
    return out + tree.dynamic


def find_sans_io_asyncio(tree: Tree, sans_io: Iterable[str] = SANS_IO_MODULES) -> list[str]:
    """(f) ``asyncio`` imported by a sans-IO core, itself or through the overlay modules it
    imports (a core that imports an asyncio module is not sans-IO either)."""
    paths = set(sans_io)
    internal: dict[str, list[str]] = {}
    for imp in tree.internal():
        internal.setdefault(imp.source, []).append(imp.target)
    uses_asyncio = {imp.source: imp for imp in tree.imports if _top(imp.target) == "asyncio"}
    out = []
    for module in sorted(m for m in tree.modules if tree.path_of(m) in paths):
        seen, stack = {module}, [[module]]
        while stack:
            chain = stack.pop()
            found = uses_asyncio.get(chain[-1])
            if found is not None:
                via = "" if len(chain) == 1 else " (through " + " -> ".join(chain[1:]) + ")"
                out.append(f"{module}{via}: {found.where()} imports {found.target}")
                break
            for nxt in internal.get(chain[-1], []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append([*chain, nxt])
    return out


RULES = {
    "a_cycles": find_cycles,
    "b_direction": find_upward_imports,
    "c_cli": find_cli_imports,
    "d_kademlia": find_dht_only_imports,
    "e_dynamic": find_dynamic_imports,
    "f_sans_io": find_sans_io_asyncio,
}


# -- the real tree -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay_tree() -> Tree:
    return scan(REPO)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_overlay_layering(overlay_tree: Tree, rule: str) -> None:
    problems = RULES[rule](overlay_tree)
    assert not problems, "\n".join(problems)


def test_sans_io_modules_exist() -> None:
    missing = [p for p in SANS_IO_MODULES if not (REPO / p).is_file()]
    assert not missing, f"SANS_IO_MODULES lists files that do not exist: {missing}"


def test_scan_sees_the_tree(overlay_tree: Tree) -> None:
    assert "overlay.dht.node" in overlay_tree.modules
    assert any(i.target == "overlay.core.identity" for i in overlay_tree.imports)


# -- the checker on synthetic trees ------------------------------------------------------------


def _write_tree(root: Path, files: dict[str, str]) -> Tree:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in {p.parent for p in root.rglob("*.py")}:
        (pkg / "__init__.py").touch()
    return scan(root)


_BAD_TREES: list[tuple[str, dict[str, str], str]] = [
    ("a_cycles", {"overlay/core/a.py": "from overlay.core import b\n",
                  "overlay/core/b.py": "import overlay.core.a\n"},
     "overlay.core.a <-> overlay.core.b"),
    ("a_cycles", {"overlay/core/a.py": "def f():\n    from . import b\n",
                  "overlay/core/b.py": "from .a import f\n"},
     "overlay.core.a <-> overlay.core.b"),
    ("a_cycles", {"overlay/core/a.py": "from overlay.core.a import x\n"}, "overlay.core.a"),
    ("b_direction", {"overlay/core/a.py": "from overlay.dht.node import DHTNode\n",
                     "overlay/dht/node.py": ""},
     "overlay.core.a:1 (top level) imports overlay.dht.node"),
    ("b_direction", {"overlay/dht/x.py": "def f():\n    import overlay.attach.frames\n",
                     "overlay/attach/frames.py": ""},
     "overlay.dht.x:2 (in a function) imports overlay.attach.frames"),
    ("b_direction", {"overlay/shiny/x.py": ""}, "'shiny' has no rank"),
    ("c_cli", {"overlay/client/d.py": "from overlay.cli.common import EXIT_OK\n",
               "overlay/cli/common.py": ""}, "overlay.client.d:1"),
    ("d_kademlia", {"overlay/node/s.py": "from kademlia.network import Server\n"},
     "imports kademlia.network"),
    ("d_kademlia", {"overlay/core/s.py": "def f():\n    import rpcudp\n"}, "imports rpcudp"),
    ("e_dynamic", {"overlay/media/h.py": "import importlib.util\n"}, "imports importlib.util"),
    ("e_dynamic", {"overlay/media/h.py": "def f():\n    from importlib import import_module\n"},
     "imports importlib"),
    ("e_dynamic", {"overlay/media/h.py": "m = __import__('overlay.relay')\n"},
     "overlay.media.h:1 uses __import__"),
    ("f_sans_io", {"overlay/attach/frames.py": "def f():\n    import asyncio\n"},
     "overlay.attach.frames:2 (in a function) imports asyncio"),
    ("f_sans_io", {"overlay/relay/budget.py": "from asyncio import sleep\n"}, "imports asyncio"),
    ("f_sans_io", {"overlay/attach/frames.py": "from overlay.core import net\n",
                   "overlay/core/__init__.py": "", "overlay/core/net.py": "import asyncio\n"},
     "overlay.attach.frames (through overlay.core.net)"),
]


@pytest.mark.parametrize(("rule", "files", "expected"), _BAD_TREES,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(_BAD_TREES)])
def test_rule_reports_violation(tmp_path: Path, rule: str, files: dict[str, str],
                                expected: str) -> None:
    tree = _write_tree(tmp_path, files)
    problems = RULES[rule](tree)
    assert any(expected in p for p in problems), problems


def test_allowed_imports_pass(tmp_path: Path) -> None:
    tree = _write_tree(tmp_path, {
        "overlay/__main__.py": "from overlay.cli.main import main\n",
        "overlay/cli/main.py": "from overlay.client import daemon\nfrom . import common\n",
        "overlay/cli/common.py": "import asyncio\n",
        "overlay/client/daemon.py": "from overlay.media import service\n"
                                    "from overlay.node.daemon import run\n",
        "overlay/media/service.py": "from overlay.relay.client import RelayClient\n",
        "overlay/node/daemon.py": "from overlay.dht import DHTNode\nfrom overlay.attach import x\n",
        "overlay/dht/__init__.py": "from overlay.dht.node import DHTNode\n",
        "overlay/dht/node.py": "import kademlia\nfrom ..core import identity\n",
        "overlay/attach/x.py": "from overlay.core.identity import Identity\n",
        "overlay/attach/adapter.py": "import asyncio\nfrom .frames import Frame\n",
        "overlay/attach/frames.py": "import struct\n",
        "overlay/relay/client.py": "import asyncio\n",
        "overlay/core/identity.py": "import hashlib\n",
    })
    assert {rule: fn(tree) for rule, fn in RULES.items()} == {rule: [] for rule in RULES}
    assert any(i.target == "overlay.core.identity" and i.source == "overlay.dht.node"
               for i in tree.imports)
