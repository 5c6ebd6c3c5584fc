"""Networks and input boxes from outside lipbench: where a network comes from, read into
the module tree the walk reads, and the box of inputs a property is about.

A network's *source* is one of

- an ``nn.Module`` (in code);
- an ONNX file (``.onnx``: :mod:`bench.onnx_file`);
- a saved torch module (``.pt`` / ``.pth``): a file of :func:`bench.netfile.save`, a
  whole module saved with ``torch.save(module, path)``, or a TorchScript file
  (``torch.jit.save``), which is exported to ONNX and read as such (its code is not
  Python, so the ONNX graph is what can be read of it);
- ``package.module:attribute``: a module object, or a function of no arguments that
  returns one (the current folder is on the import path; a function is called once per
  process, and a suite saves what it gave, :func:`snapshot`, so that every worker reads
  the same weights even where building the module draws random numbers).

:func:`fingerprint` names a source's content (the SHA-256 of a file; the content hash of
a module from code), which keys its import job: a changed file is a new network.

An input box (:func:`read_box`) comes from a ``.vnnlib`` file (its input constraints
``(assert (<= X_i c))`` / ``(assert (>= X_i c))``; nothing else of VNN-LIB is read) or a
text file of one ``lower upper`` pair per line; it is a box domain
``{lower: [...], upper: [...]}`` (:class:`bench.api.Query`).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys

from torch import nn

from .api import UserError

#: the readers' version: part of an import job's identity, so that a network is read again
#: when how lipbench reads networks changes
READER_VERSION = "1"
#: file endings read as saved torch modules
TORCH_FILES = (".pt", ".pth")
_ATTR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def kind(source) -> str:
    """"module", "onnx", "torch" or "import": what :func:`read` will do with ``source``;
    a UserError for a string that is none of them."""
    if isinstance(source, nn.Module):
        return "module"
    if not isinstance(source, (str, os.PathLike)):
        raise UserError(f"expected a torch nn.Module, a file (.onnx, .pt, .pth) or package.module:attribute, "
                        f"got {type(source).__name__}")
    s = os.fspath(source)
    if s.lower().endswith(".onnx"):
        return "onnx"
    if s.lower().endswith(TORCH_FILES):
        return "torch"
    if is_import(s):
        return "import"
    raise UserError(f"{s}: lipbench reads networks from .onnx files, saved torch modules (.pt, .pth) and "
                    f"package.module:attribute (or an nn.Module in code)")


def is_import(s: str) -> bool:
    """Does ``s`` read as package.module:attribute (and not as an existing file)?"""
    return bool(_ATTR.match(s)) and not os.path.exists(s)


def read(source, input_shape: tuple | None = None) -> tuple[nn.Module, tuple | None]:
    """(module, input shape or None) of ``source`` (see the module doc).  An ONNX or
    TorchScript file gives the input shape where it fixes it; a module does not (the walk
    infers it from a first Linear layer, else it must be given).  A missing or unreadable
    file, a failed import: one-line :class:`UserError`."""
    k = kind(source)
    if k == "module":
        return source, input_shape
    s = os.fspath(source)
    if k == "onnx":
        from . import onnx_file
        return onnx_file.read(s, input_shape)
    if k == "torch":
        return _torch_file(s, input_shape)
    return _imported(s), input_shape


def _torch_file(path: str, input_shape):
    import torch
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    import zipfile
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            script = any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
        if script:
            return _torchscript(path, input_shape)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path}: not a readable torch file ({type(e).__name__}: {_first(e)})") from None
    if isinstance(obj, dict) and obj.get("format") == 1 and isinstance(obj.get("module"), nn.Module):
        return obj["module"].eval(), input_shape or tuple(obj["input_shape"])   # lipbench's own files
    if isinstance(obj, nn.Module):
        return obj.eval(), input_shape
    what = "a state dict (weights without the module that holds them)" if isinstance(obj, dict) else \
        type(obj).__name__
    raise UserError(f"{path} holds {what}, not a module; save the whole module (torch.save(module, path)), "
                    f"a TorchScript file (torch.jit.save), or export it to ONNX")


def _torchscript(path: str, input_shape):
    """A TorchScript file, exported to ONNX (its code is TorchScript, not Python) and
    read as that; the input shape is needed unless its first layer is a Linear."""
    import tempfile
    import warnings

    import torch
    try:
        m = torch.jit.load(path, map_location="cpu").eval()
    except Exception as e:
        raise UserError(f"{path}: not a readable TorchScript file ({type(e).__name__}: {_first(e)})") from None
    if input_shape is None:
        first = next((c for c in m.modules() if c is not m and getattr(c, "original_name", "") == "Linear"), None)
        if first is None or not hasattr(first, "weight"):
            raise UserError(f"{path}: a TorchScript file does not tell its input shape; give it (--input-shape C H W, "
                            f"or input_shape= in code)")
        input_shape = (int(first.weight.shape[1]),)
    dtype = next((p.dtype for p in m.parameters()), torch.float32)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "net.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(m, (torch.zeros(1, *input_shape, dtype=dtype),), out, dynamo=False)
        except Exception as e:
            raise UserError(f"{path}: this TorchScript module could not be exported to ONNX to be read "
                            f"({type(e).__name__}: {_first(e)})") from None
        from . import onnx_file
        module, shape = onnx_file.read(out, tuple(input_shape))
    return module, shape


_IMPORTED: dict = {}   # spec -> the module it gave in this process (a function is called once)


def _imported(spec: str) -> nn.Module:
    if spec not in _IMPORTED:
        _IMPORTED[spec] = _import(spec)
    return _IMPORTED[spec]


def _import(spec: str) -> nn.Module:
    mod_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:
        raise UserError(f"{spec}: cannot import {mod_name} ({type(e).__name__}: {_first(e)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{spec}: {mod_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module) and callable(obj):
        try:
            obj = obj()
        except Exception as e:
            raise UserError(f"{spec}: calling {attr}() failed ({type(e).__name__}: {_first(e)})") from None
    if not isinstance(obj, nn.Module):
        raise UserError(f"{spec} is a {type(obj).__name__}, not a torch nn.Module (or a function returning one)")
    return obj.eval()


def snapshot(source: str, folder: str, input_shape=None) -> tuple[str, str]:
    """(content hash, path of a saved copy in ``folder``) of a network from code
    (package.module:attribute): what this process read, saved whole (``torch.save``) under
    its content hash, for the worker that imports it (another process would build it
    again, with other random weights where the code draws them)."""
    import tempfile

    import torch
    from .netfile import net_hash
    module, _ = read(source, input_shape)
    h = net_hash(module)
    path = os.path.join(folder, f"{source.replace(':', '.')}-{h}.pt")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(module, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return h, path


def fingerprint(source, input_shape=None, module: nn.Module | None = None) -> str:
    """What a source holds, as a hash: a file's SHA-256 (16 hex digits), a module's
    content hash (:func:`bench.netfile.net_hash`) for one from code (``module``: the
    module :func:`read` gave, if it was read already)."""
    k = kind(source)
    if k in ("onnx", "torch"):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
        return file_sha256(path)[:16]
    from .netfile import net_hash
    return net_hash(module if module is not None else read(source, input_shape)[0])


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first(e: Exception) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


# --------------------------------------------------------------------------- input boxes
_VNN = re.compile(r"\(\s*assert\s+\(\s*(<=|>=)\s+(\S+)\s+(\S+)\s*\)\s*\)")
_X = re.compile(r"^X_(\d+)$")


def read_box(path: str) -> dict:
    """The input box of ``path`` as ``{lower: [...], upper: [...]}``: a ``.vnnlib`` file's
    bounds on its inputs X_0, X_1, ... (each needs both), or a text file with one
    ``lower upper`` pair per input and line (commas allowed; ``#`` starts a comment)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable text file ({type(e).__name__})") from None
    return _vnnlib_box(path, text) if path.lower().endswith(".vnnlib") else _text_box(path, text)


def _vnnlib_box(path: str, text: str) -> dict:
    text = re.sub(r";[^\n]*", "", text)
    lo: dict = {}
    hi: dict = {}
    for op, a, b in _VNN.findall(text):
        var, num, flip = (a, b, False) if _X.match(a) else (b, a, True)
        m = _X.match(var)
        if not m:
            continue   # an output constraint (Y_i), or one between variables: not the input box
        try:
            v = float(num)
        except ValueError:
            continue
        upper = (op == "<=") != flip
        i = int(m.group(1))
        (hi if upper else lo)[i] = min(v, hi.get(i, v)) if upper else max(v, lo.get(i, v))
    n = len(set(lo) | set(hi))
    if not n:
        raise UserError(f"{path}: no input bounds (assert (<= X_i c)) / (assert (>= X_i c)) in it")
    missing = [i for i in range(max(set(lo) | set(hi)) + 1) if i not in lo or i not in hi]
    if missing:
        side = "lower" if missing[0] not in lo else "upper"
        raise UserError(f"{path}: input X_{missing[0]} has no {side} bound; a box needs both for every input")
    return {"lower": [lo[i] for i in range(n)], "upper": [hi[i] for i in range(n)]}


def _text_box(path: str, text: str) -> dict:
    lower, upper = [], []
    for ln, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").split()
        if not line:
            continue
        try:
            a, b = (float(x) for x in line)
        except ValueError:
            raise UserError(f"{path}, line {ln}: expected two numbers (lower upper), got {' '.join(line)!r}") from None
        lower.append(a)
        upper.append(b)
    if not lower:
        raise UserError(f"{path}: no bounds in it (one 'lower upper' pair per input and line)")
    return {"lower": lower, "upper": upper}
