"""Rewrite one betterproto2-compiler message module (messages and enums only) into silo's compact
layout, keeping every class the compiler defined, field for field.

The compiler writes each field as a statement of its own (plus a docstring), each message as
``@dataclass(eq=False, repr=False)`` + class + a ``default_message_pool.register_message`` call,
and each renamed enum with two class methods that spell out the same names twice: look-alike runs
of lines from message to message. Here each class is **one line**:

- a message: ``class Task(Message, package="silo.v1"): <fields>``, the fields separated by ``;``,
  each the compiler's own annotation and ``betterproto2.field(...)`` call with the
  ``betterproto2.`` prefix dropped (the names are imported; a class whose own field would shadow
  one keeps the prefix). ``silo.pb._message.Message`` applies the dataclass decorator and
  registers the class, as the compiler's code did;
- an enum: its members, and its renamed proto names from
  ``silo.pb._message.renamed_proto_names({value: "PROTO_NAME", ...})``;
- the compiler's docstrings (from the ``.proto`` comments) become ``#`` comments above the class.

Anything else in a class (the ``__post_init__`` the compiler adds for deprecated fields, say) is
kept as the compiler wrote it, in a class body of several lines; so is any other module statement.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field

HELPERS_MODULE = "silo.pb._message"
BETTERPROTO_NAMES = frozenset({"field", "map_meta"})
"""Attributes of ``betterproto2`` (besides the ``TYPE_*`` constants) used bare in field lines."""
RENAMED_METHODS = (
    "betterproto_value_to_renamed_proto_names",
    "betterproto_renamed_proto_names_to_value",
)


@dataclass
class _Module:
    """What the rewritten module needs imported, gathered while its classes are written."""

    betterproto_names: set[str] = field(default_factory=set)
    helpers: set[str] = field(default_factory=set)


def _docstring(node: ast.stmt | None) -> str | None:
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return inspect.cleandoc(node.value.value)
    return None


def _comment(text: str, first_prefix: str = "", indent: str = "") -> list[str]:
    """``text`` as ``#`` comment lines; ``first_prefix`` starts the first line."""
    lines = text.splitlines() or [""]
    out = []
    for n, line in enumerate(lines):
        body = (first_prefix if n == 0 else " " * len(first_prefix)) + line
        out.append(f"{indent}# {body}".rstrip())
    return out


def _is_call_of(node: ast.expr, owner: str, attr: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == attr
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == owner
    )


def _is_attr(node: ast.expr, owner: str, attr: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == attr
        and isinstance(node.value, ast.Name)
        and node.value.id == owner
    )


class _Compact(ast.NodeTransformer):
    """``betterproto2.field`` -> ``field`` (likewise ``map_meta``, ``TYPE_*``); strings in double
    quotes (as ruff would write them) by rendering each as a name holding its JSON spelling."""

    def __init__(self, used: set[str], reserved: frozenset[str]) -> None:
        self.used = used
        self.reserved = reserved

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        if isinstance(node.value, ast.Name) and node.value.id == "betterproto2":
            bare = node.attr in BETTERPROTO_NAMES or node.attr.startswith("TYPE_")
            if bare and node.attr not in self.reserved:
                self.used.add(node.attr)
                return ast.copy_location(ast.Name(id=node.attr, ctx=node.ctx), node)
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.expr:
        if isinstance(node.value, str):
            return ast.copy_location(ast.Name(id=json.dumps(node.value), ctx=ast.Load()), node)
        return node


def _expr(node: ast.expr, used: set[str], reserved: frozenset[str] = frozenset()) -> str:
    """``node`` rewritten by :class:`_Compact`; names in ``reserved`` (the class's own field
    names, which shadow module names inside its body) keep their ``betterproto2.`` prefix."""
    return ast.unparse(_Compact(used, reserved).visit(node))


def _verbatim(source: str, node: ast.stmt, indent: str = "") -> str:
    """The source of ``node`` (decorators included), re-indented to ``indent``."""
    lines = source.splitlines()
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    assert node.end_lineno is not None
    text = textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno]))
    return textwrap.indent(text, indent)


def _registrations(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """Class name -> (package, proto name) of each ``register_message`` call."""
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and _is_register(node):
            assert isinstance(node.value, ast.Call)
            package, proto_name, cls = node.value.args
            assert isinstance(cls, ast.Name)
            found[cls.id] = (ast.literal_eval(package), ast.literal_eval(proto_name))
    return found


def _is_register(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and _is_call_of(node.value, "default_message_pool", "register_message")
        and len(node.value.args) == 3  # type: ignore[attr-defined]
        and isinstance(node.value.args[2], ast.Name)  # type: ignore[attr-defined]
    )


def _is_message_class(node: ast.stmt) -> bool:
    if not isinstance(node, ast.ClassDef) or len(node.bases) != 1 or node.keywords:
        return False
    if not _is_attr(node.bases[0], "betterproto2", "Message") or len(node.decorator_list) != 1:
        return False
    deco = node.decorator_list[0]
    return (
        isinstance(deco, ast.Call)
        and isinstance(deco.func, ast.Name)
        and deco.func.id == "dataclass"
        and not deco.args
        and {(k.arg, ast.literal_eval(k.value)) for k in deco.keywords}
        == {("eq", False), ("repr", False)}
    )


def _is_enum_class(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.ClassDef)
        and not node.decorator_list
        and not node.keywords
        and len(node.bases) == 1
        and _is_attr(node.bases[0], "betterproto2", "Enum")
    )


def _statements(body: list[ast.stmt]) -> Iterable[tuple[ast.stmt, str | None]]:
    """Each statement of a class body (the class docstring excluded) with the docstring that
    follows it, if any."""
    start = 1 if _docstring(body[0]) is not None else 0
    n = start
    while n < len(body):
        node = body[n]
        doc = _docstring(body[n + 1]) if n + 1 < len(body) else None
        yield node, doc
        n += 2 if doc is not None else 1


def compact_message(
    node: ast.ClassDef, registration: tuple[str, str], source: str, module: _Module
) -> list[str]:
    """The lines of one message class in the compact layout."""
    comments: list[str] = []
    class_doc = _docstring(node.body[0])
    if class_doc:
        comments += _comment(class_doc)
    fields: list[str] = []
    extra: list[str] = []
    reserved = frozenset(
        stmt.target.id
        for stmt in node.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    )
    for stmt, doc in _statements(node.body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and stmt.value is not None
            and _is_call_of(stmt.value, "betterproto2", "field")
        ):
            annotation = _expr(stmt.annotation, module.betterproto_names, reserved)
            value = _expr(stmt.value, module.betterproto_names, reserved)
            fields.append(f"{stmt.target.id}: {annotation} = {value}")
            if doc:
                comments += _comment(doc, f"{stmt.target.id}: ")
        elif isinstance(stmt, ast.Pass):
            continue
        else:
            extra.append(_verbatim(source, stmt, "    "))
            if doc:
                extra.append(textwrap.indent(f'"""{doc}"""', "    "))
    package, proto_name = registration
    module.helpers.add("Message")
    keywords = f"package={json.dumps(package)}"
    if proto_name != node.name:
        keywords += f", proto_name={json.dumps(proto_name)}"
    header = f"class {node.name}(Message, {keywords}):"
    if extra:
        return [*comments, header, *(["    " + "; ".join(fields)] if fields else []), *extra]
    return [*comments, f"{header} {'; '.join(fields) or 'pass'}"]


def _returned_dict(stmt: ast.stmt) -> dict | None:
    if (
        isinstance(stmt, ast.FunctionDef)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], ast.Return)
        and stmt.body[0].value is not None
    ):
        try:
            value = ast.literal_eval(stmt.body[0].value)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def compact_enum(node: ast.ClassDef, source: str, module: _Module) -> list[str]:
    """The lines of one enum class in the compact layout."""
    comments: list[str] = []
    class_doc = _docstring(node.body[0])
    if class_doc:
        comments += _comment(class_doc)
    members: list[str] = []
    renamed: dict[str, dict] = {}
    extra: list[str] = []
    for stmt, doc in _statements(node.body):
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(ast.literal_eval(stmt.value), int)
        ):
            name = stmt.targets[0].id
            members.append(f"{name} = {ast.literal_eval(stmt.value)}")
            if doc:
                comments += _comment(doc, f"{name}: ")
            continue
        if isinstance(stmt, ast.FunctionDef) and stmt.name in RENAMED_METHODS:
            value = _returned_dict(stmt)
            if value is not None:
                renamed[stmt.name] = value
                continue
        extra.append(_verbatim(source, stmt, "    "))
    body = members
    by_value = renamed.get(RENAMED_METHODS[0])
    by_name = renamed.get(RENAMED_METHODS[1])
    if by_value is not None and by_name == {v: k for k, v in by_value.items()}:
        module.helpers.add("renamed_proto_names")
        names = ", ".join(f"{value}: {json.dumps(name)}" for value, name in by_value.items())
        body = [*members, f"{', '.join(RENAMED_METHODS)} = renamed_proto_names({{{names}}})"]
    else:  # not the pair of inverse mappings the compiler writes: keep what it wrote
        extra += [
            _verbatim(source, stmt, "    ")
            for stmt in node.body
            if isinstance(stmt, ast.FunctionDef) and stmt.name in renamed
        ]
    header = f"class {node.name}(betterproto2.Enum):"
    if extra:
        return [*comments, header, *(["    " + "; ".join(body)] if body else []), *extra]
    return [*comments, f"{header} {'; '.join(body) or 'pass'}"]


def _from_import(module: str, names: Iterable[str]) -> str:
    """``from module import names`` on one line, names in ruff's isort order (constants,
    classes, then the rest)."""

    def order(name: str) -> tuple[int, str]:
        if name.isupper():
            return 0, name
        return (1 if name[:1].isupper() else 2), name

    return f"from {module} import {', '.join(sorted(set(names), key=order))}"


def proto_sources(source: str) -> str:
    """The ``.proto`` files a compiler-generated module says it came from."""
    for line in source.splitlines():
        if line.startswith("# sources:"):
            return line.removeprefix("# sources:").strip()
    return "proto/"


def _is_compiler_version(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return isinstance(target, ast.Name) and target.id == "_COMPILER_VERSION"
    return False


REPLACED_IMPORTS = ("from dataclasses import dataclass", "import betterproto2")
"""Compiler imports the compact layout replaces (``import betterproto2`` is written again)."""
POOL_IMPORT_SUFFIX = "message_pool import default_message_pool"


def compact_module(source: str, package: str) -> str:
    """The compact rewrite of one compiler-generated message module (``package`` is its Python
    package, e.g. ``silo.pb.silo.v1``)."""
    tree = ast.parse(source)
    registrations = _registrations(tree)
    compact = {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and (_is_enum_class(node) or (_is_message_class(node) and node.name in registrations))
    }
    verbatim_messages = any(
        isinstance(node, ast.ClassDef) and _is_message_class(node) and node.name not in compact
        for node in tree.body
    )
    module = _Module()
    names: list[str] = []
    version: str | None = None
    top: list[str] = []  # the compiler's imports before its first class, still needed
    blocks: list[list[str]] = []  # classes and whatever follows them, in the compiler's order
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__":
            names = list(ast.literal_eval(node.value))
        elif _is_compiler_version(node):
            version = ast.literal_eval(node.value)  # type: ignore[attr-defined]
        elif isinstance(node, ast.Expr) and _is_call_of(
            node.value, "betterproto2", "check_compiler_version"
        ):
            continue
        elif isinstance(node, ast.Import | ast.ImportFrom):
            text = ast.unparse(node)
            replaced = text in REPLACED_IMPORTS or text.endswith(POOL_IMPORT_SUFFIX)
            if replaced and not (verbatim_messages and text != "import betterproto2"):
                continue
            (blocks.append([text]) if blocks else top.append(text))
        elif _is_register(node) and node.value.args[2].id in compact:  # type: ignore[attr-defined]
            continue
        elif isinstance(node, ast.ClassDef) and node.name in compact:
            if _is_enum_class(node):
                blocks.append(compact_enum(node, source, module))
            else:
                blocks.append(compact_message(node, registrations[node.name], source, module))
        else:
            blocks.append([_verbatim(source, node)])
    if version is None:
        raise ValueError(f"{package}: no _COMPILER_VERSION in the compiler's output")
    return _render(proto_sources(source), package, names, version, top, blocks, module)


def _render(
    sources: str,
    package: str,
    names: list[str],
    version: str,
    top: list[str],
    blocks: list[list[str]],
    module: _Module,
) -> str:
    proto_package = package.removeprefix("silo.pb.")
    header = [
        f"# Generated by scripts/gen_proto.py from {sources} (betterproto2-compiler {version}"
        " output, one line",
        "# per class: see silo/pb/_message.py).  DO NOT EDIT!",
        "# ruff: noqa",
        f'"""Messages and enums of the protobuf package ``{proto_package}``."""',
        "",
        f"__all__ = ({', '.join(json.dumps(n) for n in names)}{',' if len(names) == 1 else ''})",
        "",
        "import betterproto2",
    ]
    if module.betterproto_names:
        header.append(_from_import("betterproto2", module.betterproto_names))
    header += top
    if module.helpers:
        header += ["", _from_import(HELPERS_MODULE, module.helpers)]
    header += ["", f"betterproto2.check_compiler_version({json.dumps(version)})"]
    parts = ["\n".join(header), *("\n".join(block) for block in blocks)]
    return "\n\n\n".join(parts) + "\n"
