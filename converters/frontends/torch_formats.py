"""Which torch model formats can be loaded without running code from the file, and the checks
that make an ExportedProgram (`.pt2`) one of them.

What each format runs when torch loads it (torch 2.13, measured here):

- a pickled module (`torch.save(model)`, MLflow `serialization_format="pickle"`): any Python the
  pickle names - a `__reduce__` runs on `torch.load(weights_only=False)`. Code.
- a TorchScript archive (`torch.jit.save`): TorchScript, not Python, but a program all the same:
  `torch.jit.load` runs the archive's `__setstate__` methods while loading, and TorchScript
  reaches every registered operator, `aten::save(obj, filename)` and `aten::from_file` included -
  an archive that writes a file of its choosing on load was built and run here. Code.
- a state dict / tensors (`torch.save(model.state_dict())`) read with `weights_only=True`: data,
  but without the architecture nothing can be converted.
- an ExportedProgram (`torch.export.save`): a graph of tensor operators plus weights. Code-free
  only when checked first, because `torch.export.load` also
    * unpickles weights/constants stored with `use_pickle` and the sample inputs with
      `weights_only=False` (after `weights_only=True` fails), and custom objects with pickle;
    * evaluates every symbolic shape expression with `sympy.sympify` (Python `eval`), and
    * `ExportedProgram.module()` `exec`s the archive's `guards_code` strings;
    * and the graph may call any `torch.*` attribute path (e.g. `torch.serialization.os.system`)
      or file-touching operators (`aten::save`).
  `check_pt2` refuses all of that before torch opens the file (records: JSON, plain metadata,
  raw tensor bytes, or `torch.load(weights_only=True)` payloads; no AOTInductor binaries or
  custom objects; shape expressions and guards parsed and allow-listed; graph targets tensor
  operators only), and `check_graph` checks the loaded graph again.

The pickle test never unpickles: `torch.load(weights_only=True)` refuses every global outside
torch's allow-list (`UnpicklingError`) before calling it.
"""
from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from pathlib import Path

PT2 = "pt2"                    # torch.export archive
TORCHSCRIPT = "torchscript"    # torch.jit.save archive
TORCH_SAVE = "torch.save"      # torch.save zip: a state dict (weights only) or a pickled object
UNKNOWN_ZIP = "zip"


class CodeInModel(Exception):
    """The model cannot be loaded without running code it carries; the message says why."""


# -- what a file is ---------------------------------------------------------------------------------

def classify(path: Path) -> str:
    """PT2, TORCHSCRIPT, TORCH_SAVE or UNKNOWN_ZIP for a zip archive (call only on zips)."""
    with zipfile.ZipFile(path) as z:
        names = [_inner(n) for n in z.namelist()]
    if "archive_format" in names or any(n.startswith("models/") and n.endswith(".json") for n in names) \
            or "serialized_exported_program.json" in names:
        return PT2
    if any(n.startswith("code/") for n in names) or "constants.pkl" in names:
        return TORCHSCRIPT
    if "data.pkl" in names:
        return TORCH_SAVE
    return UNKNOWN_ZIP


def weights_only(data: bytes | Path) -> bool:
    """True when torch.load(weights_only=True) reads it (tensors, numbers, strings, containers):
    False for a pickle that names anything else. Never unpickles code."""
    import pickle

    import torch

    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return False
    return True


def _inner(name: str) -> str:
    """A record's name inside torch's archive folder (`model/data.pkl` -> `data.pkl`)."""
    return name.split("/", 1)[1] if "/" in name else name


# -- ExportedProgram (.pt2) -------------------------------------------------------------------------

_TEXT_RECORDS = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
                 "version"}
_TEXT_CONTENT = re.compile(rb"[A-Za-z0-9._-]{0,64}\n?")
_CONFIG = re.compile(r"data/(weights|constants)/[^/]+_config\.json")
_RAW_PREFIXES = ("weight_", "tensor_")
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
_MAX_EXPR = 20_000


def check_pt2(path: Path) -> None:
    """Raise CodeInModel unless loading the archive with `torch.export.load` and calling
    `.module()` can run nothing but tensor operators (see the module docstring)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CodeInModel("not a zip archive (truncated or corrupt?)") from None
    with archive:
        infos = {_inner(i.filename): i for i in archive.infolist() if not i.is_dir()}
        if "archive_format" not in infos or archive.read(infos["archive_format"]).strip() != b"pt2":
            raise CodeInModel("not a torch.export archive of the current format (no archive_format 'pt2'; "
                              "the legacy format unpickles its parts)")
        raw, pickled = set(), set()
        for name, info in infos.items():
            if _CONFIG.fullmatch(name):
                _payload_records(name, _json(archive.read(info), name), raw, pickled)
        for name, info in sorted(infos.items()):
            if name.startswith("data/aotinductor/") or name.endswith((".so", ".dll", ".dylib", ".o", ".cpp")):
                raise CodeInModel(f"it carries compiled AOTInductor code ({name})")
            if name in raw and name not in pickled:
                continue                                  # read as raw tensor bytes, never parsed
            if name.startswith("extra/"):
                continue                                  # text torch hands back only when asked
            data = archive.read(info)
            if name in _TEXT_RECORDS:
                if not _TEXT_CONTENT.fullmatch(data):
                    raise CodeInModel(f"record {name} is not the short text torch writes there")
                continue
            if name.startswith("models/") and name.endswith(".json"):
                check_program(_json(data, name))
                continue
            if name.endswith(".json"):
                _json(data, name)
                continue
            if not weights_only(data):                     # pickled weights, constants, sample inputs
                raise CodeInModel(f"record {name} is a pickle of objects beyond tensors and containers")


def _json(data: bytes, name: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise CodeInModel(f"record {name} is not valid JSON") from None


def _payload_records(name: str, config, raw: set, pickled: set) -> None:
    folder = name.rsplit("/", 1)[0]
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise CodeInModel(f"record {name} is not a payload config")
    for fqn, entry in entries.items():
        path_name = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(path_name, str) or "/" in path_name:
            raise CodeInModel(f"record {name}: entry {fqn!r} has no plain path_name")
        if path_name.startswith(_OBJECT_PREFIXES):
            raise CodeInModel(f"constant {fqn!r} is a custom Python/TorchScript object ({path_name}), which "
                              f"torch.export.load unpickles")
        if entry.get("use_pickle") is False and path_name.startswith(_RAW_PREFIXES):
            raw.add(f"{folder}/{path_name}")
        else:
            pickled.add(f"{folder}/{path_name}")


def check_program(doc) -> None:
    """The serialized program (`models/<name>.json`): every shape expression and guard parses to
    plain arithmetic on symbols, every node calls an allowed operator."""
    for code in (doc.get("guards_code") or []) if isinstance(doc, dict) else []:
        _check_guard(code)
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            expr = node.get("expr_str")
            if expr is not None:
                _check_sym_expr(expr)
            if "target" in node and "inputs" in node and "outputs" in node:
                _check_target_name(node["target"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


# sympy's srepr of the shape expressions torch writes, and torch's own sympy functions
_SYMPY_CALLS = {
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "floor",
    "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "IsNonOverlappingAndDenseIndicator",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "OpaqueUnaryFn_sqrt",
}
_SYMPY_NAMES = _SYMPY_CALLS | {"oo", "zoo", "nan", "true", "false", "S", "pi", "E", "Half", "One", "Zero",
                               "NegativeOne", "Infinity", "NegativeInfinity", "BooleanTrue", "BooleanFalse"}
_ASSUMPTIONS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
                "nonzero", "even", "odd", "rational", "commutative", "extended_real", "complex", "infinite"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ARITH = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Load, ast.operator, ast.unaryop,
          ast.boolop, ast.cmpop)


def _check_sym_expr(expr) -> None:
    """`sympy.sympify` evaluates the string as Python: only constructors of sympy numbers, symbols
    and functions over constants may appear (no attributes, subscripts, lambdas, other names)."""
    tree = _parse(expr, "a shape expression")
    for node in ast.walk(tree):
        if isinstance(node, _ARITH):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:
            if all(kw.arg in _ASSUMPTIONS and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool)
                   for kw in node.keywords):
                continue
        elif isinstance(node, ast.Name) and node.id in _SYMPY_NAMES:
            continue
        elif isinstance(node, ast.keyword):
            continue                                    # checked with its Call
        elif isinstance(node, ast.Constant) and (isinstance(node.value, (int, float, bool))
                                                 or isinstance(node.value, str) and _IDENT.fullmatch(node.value)):
            continue
        raise CodeInModel(f"a shape expression is not plain sympy ({_short(expr)}), and torch evaluates "
                          f"those as Python")


_GUARD_ATTRS = {"size", "stride", "storage_offset", "dim", "numel", "shape"}
_MATH_ATTRS = {"isnan", "inf", "ceil", "floor", "trunc", "sqrt"}
_GUARD_CALLS = {"Max", "Min", "FloorDiv", "Mod", "PythonMod", "CeilDiv", "IntTrueDiv", "FloatTrueDiv", "ToFloat",
                "TruncToInt", "TruncToFloat", "CeilToInt", "FloorToInt", "RoundToInt", "PowByNatural", "FloatPow",
                "sym_max", "sym_min", "sym_float", "sym_int", "abs", "min", "max"}


def _check_guard(code) -> None:
    """`ExportedProgram.module()` `exec`s each guard: comparisons over input sizes only
    (`L['x'].size()[1] >= 4`, `math.isnan(...)`)."""
    tree = _parse(code, "an input guard")
    for node in ast.walk(tree):
        if isinstance(node, _ARITH) or isinstance(node, ast.Name) and node.id in ("L", "math"):
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str)) and \
                (not isinstance(node.value, str) or _IDENT.fullmatch(node.value)):
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.slice, (ast.Constant, ast.UnaryOp)):
            continue
        if isinstance(node, ast.Attribute) and (node.attr in _GUARD_ATTRS or node.attr in _MATH_ATTRS
                                                and isinstance(node.value, ast.Name) and node.value.id == "math"):
            continue
        if isinstance(node, ast.Call) and not node.keywords and (
                isinstance(node.func, ast.Attribute) or isinstance(node.func, ast.Name) and node.func.id in _GUARD_CALLS):
            continue
        if isinstance(node, ast.Name) and node.id in _GUARD_CALLS:
            continue
        raise CodeInModel(f"an input guard is not a plain size check ({_short(code)}), and torch runs "
                          f"those as Python")


def _parse(text, what: str) -> ast.AST:
    if not isinstance(text, str) or len(text) > _MAX_EXPR:
        raise CodeInModel(f"{what} is not a string of at most {_MAX_EXPR} characters")
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CodeInModel(f"{what} does not parse ({_short(text)})") from None


def _short(text: str) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


# -- what the graph calls ---------------------------------------------------------------------------

_OP_NAMESPACES = {"aten", "prims", "quantized_decomposed"}
_HIGHER_ORDER = {"cond", "while_loop", "map_impl", "scan", "associative_scan", "wrap_with_set_grad_enabled",
                 "wrap_with_autocast"}
_OPERATOR = {"getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
             "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift"}
_MATH = {"ceil", "floor", "trunc", "sqrt"}
_TORCH_FUNCS = {"sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum", "sym_sqrt",
                "_sym_sqrt", "sym_fresh_size", "_check", "_check_is_size", "_assert", "_assert_async"}
_FILE_ARG = re.compile(r"file|path|dir", re.I)


def _check_target_name(target) -> None:
    """A node target as serialized (`torch.ops.aten.conv2d.default`, `_operator.getitem`)."""
    if not isinstance(target, str):
        raise CodeInModel("a graph node has no operator name")
    parts = target.split(".")
    ok = False
    if parts[:2] == ["torch", "ops"] and len(parts) in (4, 5):
        ok = _allowed_op(parts[2], parts[3], parts[4] if len(parts) == 5 else None)
    elif parts[0] == "_operator" and len(parts) == 2:
        ok = parts[1] in _OPERATOR
    elif parts[0] == "math" and len(parts) == 2:
        ok = parts[1] in _MATH
    elif parts[0] == "torch" and len(parts) == 2:
        ok = parts[1] in _TORCH_FUNCS
    if not ok:
        raise CodeInModel(f"its graph calls {_short(target)}, which is not an allowed tensor operator")


def _allowed_op(namespace: str, name: str, overload: str | None) -> bool:
    import torch

    if namespace == "higher_order":
        return name in _HIGHER_ORDER
    if namespace not in _OP_NAMESPACES or not _IDENT.fullmatch(name):
        return False
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
        op = getattr(packet, overload or "default")
    except (AttributeError, RuntimeError):
        return False
    return _no_file_arguments(op)


def _no_file_arguments(op) -> bool:
    """Operators that name a file (aten::save, aten::from_file) read or write the file system."""
    schema = getattr(op, "_schema", None)
    if schema is None:
        return False
    return not any("str" in str(a.type) and _FILE_ARG.search(a.name) for a in schema.arguments)


def check_graph(program) -> None:
    """The loaded ExportedProgram again: every call is an allowed operator (subgraphs included)."""
    import math
    import operator

    import torch

    for gm in program.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op != "call_function":
                raise CodeInModel(f"its graph has a {node.op} node ({node.target}); exported graphs call "
                                  f"functions only")
            if isinstance(target, torch._ops.OpOverload):
                ok = target.namespace in _OP_NAMESPACES and _no_file_arguments(target)
            elif isinstance(target, torch._ops.HigherOrderOperator):
                ok = target.name() in _HIGHER_ORDER
            elif getattr(target, "__module__", None) == "_operator" or target in vars(operator).values():
                ok = getattr(target, "__name__", "") in _OPERATOR and getattr(operator, target.__name__) is target
            elif target in vars(math).values():
                ok = target.__name__ in _MATH
            else:
                ok = getattr(target, "__name__", "") in _TORCH_FUNCS and \
                    getattr(torch, target.__name__, None) is target
            if not ok:
                raise CodeInModel(f"its graph calls {_short(repr(target))}, which is not an allowed tensor "
                                  f"operator")
