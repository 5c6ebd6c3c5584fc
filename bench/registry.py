"""Plug-in registry.

Plug-ins register with a decorator in their own module::

    from bench.registry import register
    from bench.api import Verifier

    @register
    class MyVerifier(Verifier):
        name = "mine"
        ...

and are found through the entry-point group ``lipbench.plugins``: each entry point names
a module (or an object in one) whose import runs the decorators.  lipbench's own
``methods`` and ``baselines`` are found this way too; ``bench`` never imports them by
name.  Activations register with :func:`register_activation` (from
:mod:`bench.activations`, where their descriptions live; re-exported here).
"""
from __future__ import annotations

import logging
from importlib import metadata, import_module
from typing import Callable

from . import activations
from .activations import ACTIVATIONS, register_activation  # noqa: F401  (re-exported)
from .api import Trainer, UserError, Verifier

log = logging.getLogger(__name__)

VERIFIERS: dict[str, type[Verifier]] = {}
TRAINERS: dict[str, type[Trainer]] = {}
#: entry points that failed to load: name -> error text
BROKEN: dict[str, str] = {}
_loaded = False
ENTRY_POINT_GROUP = "lipbench.plugins"


def register(cls):
    """Class decorator: register a Verifier or Trainer subclass under ``cls.name``.  A
    class without its own ``description`` is described by its docstring's first
    paragraph (what ``bench list`` shows)."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__qualname__} has no name")
    if issubclass(cls, Verifier):
        table = VERIFIERS
    elif issubclass(cls, Trainer):
        table = TRAINERS
    else:
        raise TypeError(f"{cls.__qualname__} is neither a Verifier nor a Trainer")
    old = table.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        # a plug-in never replaces another, built-in or not (re-importing the same module is fine)
        raise TypeError(f"plug-in name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
                        f"{old.__module__}.{old.__qualname__}")
    if not cls.__dict__.get("description") and cls.__doc__:
        cls.description = summary(cls.__doc__)   # its docstring's first paragraph, on one line
    table[cls.name] = cls
    return cls


def summary(doc: str) -> str:
    """A docstring's first paragraph as one line: a plug-in's default description."""
    import inspect
    first = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(first.split())


def load_plugins() -> None:
    """Import every module named in the ``lipbench.plugins`` entry-point group, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plug-in must not break the rest
            BROKEN[ep.name] = f"{type(e).__name__}: {e}"
            log.warning("plug-in %s (%s) failed to load: %s", ep.name, ep.value, e)


def preloads(verifiers=(), trainers=()) -> list[str]:
    """What the named plug-ins declare in ``preload`` and is installed, sorted: the
    modules a run's fork server imports once for its jobs (an unknown name or a library
    that is not installed adds nothing: its jobs say why they cannot run)."""
    import importlib.util
    load_plugins()
    names = {m for table, wanted in ((VERIFIERS, verifiers), (TRAINERS, trainers))
             for n in wanted if n in table for m in table[n].preload}
    out = []
    for m in sorted(names):
        try:
            if importlib.util.find_spec(m) is not None:
                out.append(m)
        except (ImportError, ValueError):
            pass
    return out


def _get(table: dict, what: str, name: str):
    load_plugins()
    if name not in table:
        valid = ", ".join(sorted(table)) or "(none)"
        raise UserError(f"unknown {what} {name!r}; registered: {valid} (a plug-in of your own is loaded with "
                        f"--plugin MODULE|FILE|DIR, or a suite's plugins: list)")
    return table[name]


def get_verifier(name: str) -> type[Verifier]:
    return _get(VERIFIERS, "verifier", name)


def get_trainer(name: str) -> type[Trainer]:
    return _get(TRAINERS, "trainer", name)


def get_activation(name: str) -> Callable:
    """The factory ``(**params) -> nn.Module`` of the activation named ``name`` (plug-ins
    loaded first: they register activations too)."""
    load_plugins()
    return activations.get(name).build


def _where(e: BaseException) -> str:
    """One line: the exception and the file and line it came from (the innermost frame
    outside Python's import machinery; a SyntaxError's own position)."""
    import traceback
    msg = " ".join(str(e).split()) or "(no message)"
    if isinstance(e, SyntaxError) and e.filename:
        return f"{type(e).__name__}: {e.msg} at {e.filename}:{e.lineno}"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename
              and not f.filename.startswith("<frozen")]
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {msg}{at}"


FILE_PLUGINS = "lipbench_plugins."


def entry_of(module_name: str) -> str:
    """How another process imports the plug-in module ``module_name`` with
    :func:`import_plugin`: its file for one imported from a file or folder (registered as
    ``lipbench_plugins.<stem>``, a name no other process knows), else the name."""
    import sys
    f = getattr(sys.modules.get(module_name), "__file__", None)
    return f if module_name.startswith(FILE_PLUGINS) and f else module_name


def import_plugin(entry: str) -> list[str]:
    """Import a plug-in: a module name (``mypkg.myverifier``), a ``.py`` file, or a folder
    whose every ``*.py`` file is a plug-in (a file dropped there works without installing
    anything).  Files are imported as ``lipbench_plugins.<stem>``.  Returns the module
    names imported; a plug-in that cannot be imported is a UserError naming it."""
    import importlib.util
    import os
    import sys
    load_plugins()  # the installed plug-ins first: a user's plug-in cannot take their names
    if not (entry.endswith(".py") or os.sep in entry or os.path.isdir(entry)):
        try:
            import_module(entry)
        except Exception as e:
            raise UserError(f"plug-in module {entry!r} cannot be imported: {_where(e)}") from None
        return [entry]
    if os.path.isdir(entry):
        files = sorted(os.path.join(entry, f) for f in os.listdir(entry) if f.endswith(".py") and not f.startswith("_"))
    elif os.path.isfile(entry):
        files = [entry]
    else:
        raise UserError(f"plug-in {entry} is neither a module name, a .py file nor a folder")
    names = []
    for path in files:
        name = FILE_PLUGINS + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[name]
                raise UserError(f"plug-in file {path} cannot be imported: {_where(e)}") from None
        names.append(name)
    return names
