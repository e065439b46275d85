"""Facts about a vLLM release, read from its Python source with :mod:`ast` (never imported or run).

Each extractor takes one file's text and returns what the capability checker (:mod:`capability_check`) compares
the table against: string choices and ``Literal`` types, class fields, enum members, the upper-case names a
module refers to, format strings (log lines, flags), and ``envs.py``'s variables with their defaults.
:class:`SourceFacts` gathers them over the files of one release. Unparseable source yields no facts.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_BACKEND_ENUMS = ("_Backend", "AttentionBackendEnum", "Backend")
_REQUEST_CLASSES = ("ChatCompletionRequest", "CompletionRequest")
_ARGS_CLASSES = ("EngineArgs", "AsyncEngineArgs", "FrontendArgs")


# --------------------------------------------------------------------------- extractors (pure, on source text)


def _parse(src: str) -> ast.Module | None:
    try:
        return ast.parse(src)
    except SyntaxError:
        return None


def _strings(node: ast.AST) -> list[str] | None:
    """The strings of a literal list/tuple/set of string constants, else None."""
    if not isinstance(node, (ast.List, ast.Tuple, ast.Set)) or not node.elts:
        return None
    found = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return found if len(found) == len(node.elts) else None


def string_choices(src: str) -> list[list[str]]:
    """Every literal collection of strings: ``["a", "b"]``, ``("a",)``, ``Literal["a", "b"]`` (each Literal of
    a ``Union[Literal[...], Literal[...]]`` separately), in source order."""
    tree = _parse(src)
    if tree is None:
        return []
    out: list[list[str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, (ast.Name, ast.Attribute)):
            name = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
            if name == "Literal":
                inner = node.slice
                vals = _strings(inner) if isinstance(inner, ast.Tuple) else (
                    [inner.value] if isinstance(inner, ast.Constant) and isinstance(inner.value, str) else None)
                if vals:
                    out.append(vals)
                continue
        vals = _strings(node)
        if vals:
            out.append(vals)
    return out


def union_of_literals(src: str, members: Iterable[str]) -> bool:
    """Whether some ``Union[Literal[...], Literal[...]]`` (or ``Literal[...] | Literal[...]``) mixes two string
    Literals holding any of ``members``: an argparse ``choices`` built from such a type by iterating a set
    depends on the process's string hash seed (vLLM 0.8.x ``get_kwargs``)."""
    tree = _parse(src)
    if tree is None:
        return False
    wanted = set(members)

    aliases: dict[str, ast.AST] = {}  # module-level `Name = Literal[...]`
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            aliases[stmt.targets[0].id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            aliases[stmt.target.id] = stmt.value

    def literal_values(n: ast.AST) -> set[str]:
        if isinstance(n, ast.Name) and n.id in aliases:
            n = aliases[n.id]
        if (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id == "Literal"):
            s = n.slice
            elts = s.elts if isinstance(s, ast.Tuple) else [s]
            return {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    for node in ast.walk(tree):
        parts: list[ast.AST] = []
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Union":
            parts = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            parts = [node.left, node.right]
        lits = [literal_values(p) for p in parts]
        if sum(1 for v in lits if v) >= 2 and set().union(*lits) & wanted:
            return True
    return False


def _classes(src: str, class_names: Iterable[str]) -> Iterable[ast.ClassDef]:
    tree = _parse(src)
    names = set(class_names)
    if tree is not None:
        yield from (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name in names)


def class_fields(src: str, class_names: Iterable[str]) -> set[str]:
    """The annotated attribute names (dataclass / pydantic fields) of the named classes in ``src``."""
    return {stmt.target.id for node in _classes(src, class_names) for stmt in node.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


def enum_members(src: str, class_names: Iterable[str] = _BACKEND_ENUMS) -> set[str]:
    """Member names of the named enum classes (``NAME = enum.auto()`` / ``NAME = "..."``)."""
    out: set[str] = set()
    for node in _classes(src, class_names):
        if not any((isinstance(b, ast.Attribute) and b.attr.endswith("Enum")) or
                   (isinstance(b, ast.Name) and b.id.endswith("Enum")) for b in node.bases):
            continue
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else (
                [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else [])
            out.update(t.id for t in targets if isinstance(t, ast.Name) and t.id[:1].isupper())
    return out


def identifiers_used(src: str) -> set[str]:
    """Upper-case names the code refers to: ``X.NAME`` attributes and ``"NAME"`` strings (backend names in a
    platform's selection code)."""
    tree = _parse(src)
    out: set[str] = set()
    if tree is None:
        return out
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.attr):
            out.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+",
                                                                                               node.value):
            out.add(node.value)
    return out


def format_strings(src: str) -> list[str]:
    """Every string constant and f-string, f-string values as ``{}`` (log messages, flags)."""
    tree = _parse(src)
    if tree is None:
        return []
    out: list[str] = []
    inside: set[int] = set()
    specs = {id(n.format_spec) for n in ast.walk(tree) if isinstance(n, ast.FormattedValue) and n.format_spec}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in specs:
            text = ""
            for v in node.values:
                inside.add(id(v))
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    text += v.value
                else:
                    text += "{}"
                    if isinstance(v, ast.FormattedValue) and v.format_spec is not None:
                        inside.update(id(fv) for fv in ast.walk(v.format_spec))
            out.append(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside:
            out.append(node.value)
    return out


def env_variables(src: str) -> dict[str, str | None]:
    """``envs.py``: the keys of its ``environment_variables`` dict, each with the literal default of its
    ``os.getenv(NAME, "default")`` where the lambda has one (else None)."""
    tree = _parse(src)
    out: dict[str, str | None] = {}
    if tree is None:
        return out
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        if target != "environment_variables" or not isinstance(value, ast.Dict):
            continue
        for k, v in zip(value.keys, value.values, strict=True):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                default = None
                for call in ast.walk(v):
                    if (isinstance(call, ast.Call) and len(call.args) >= 2
                            and isinstance(call.args[0], ast.Constant) and call.args[0].value == k.value
                            and isinstance(call.args[1], ast.Constant)):
                        value_ = call.args[1].value
                        default = None if value_ is None else str(value_)
                        break
                out[k.value] = default
    return out


# --------------------------------------------------------------------------- facts of one release


@dataclass
class SourceFacts:
    """What the checks need, extracted once per release from ``files`` (path -> text) and ``names`` (every
    path in the wheel)."""

    names: frozenset[str]
    files: Mapping[str, str]
    flags: dict[str, str] = field(default_factory=dict)  # "--flag" -> file it is defined in
    arg_fields: dict[str, str] = field(default_factory=dict)  # EngineArgs/AsyncEngineArgs/FrontendArgs field -> file
    backend_choices: list[tuple[str, list[str]]] = field(default_factory=list)  # (file, choices)
    mixed_backend_literals: list[str] = field(default_factory=list)  # files with Union[Literal, Literal]
    attention_enum: dict[str, str] = field(default_factory=dict)  # member -> file
    cpu_attention_refs: dict[str, str] = field(default_factory=dict)  # names the CPU selection code uses -> file
    request_fields: dict[str, str] = field(default_factory=dict)  # Chat/CompletionRequest field -> file
    so_config_fields: dict[str, str] = field(default_factory=dict)  # StructuredOutputsConfig / DecodingConfig
    envs: dict[str, str | None] = field(default_factory=dict)
    strings: list[tuple[str, str]] = field(default_factory=list)  # (file, format string)

    @classmethod
    def extract(cls, names: Iterable[str], files: Mapping[str, str]) -> SourceFacts:
        f = cls(frozenset(names), files)
        backend_words = {"outlines", "lm-format-enforcer", "xgrammar", "guidance"}
        for path, src in sorted(files.items()):
            strings = format_strings(src)
            f.strings += [(path, s) for s in strings]
            for s in strings:
                if re.fullmatch(r"--[a-z0-9][a-z0-9-]+", s):
                    f.flags.setdefault(s, path)
            for name in class_fields(src, _ARGS_CLASSES):
                f.arg_fields.setdefault(name, path)
            if path.startswith(("vllm/engine/", "vllm/config")):
                for choices in string_choices(src):
                    if "lm-format-enforcer" in choices or len(backend_words & set(choices)) >= 2:
                        f.backend_choices.append((path, choices))
                if union_of_literals(src, backend_words):
                    f.mixed_backend_literals.append(path)
                for name in class_fields(src, ("StructuredOutputsConfig", "DecodingConfig")):
                    f.so_config_fields.setdefault(name, path)
            if path.startswith(("vllm/platforms/interface.py", "vllm/attention/", "vllm/v1/attention/")):
                for m in enum_members(src):
                    f.attention_enum.setdefault(m, path)
            # the CPU platform's backend choice (vllm/attention/selector.py before platforms/cpu.py existed),
            # and the engine's list of V1 backends (0.9-0.10 `_is_v1_supported_oracle`)
            if path in ("vllm/platforms/cpu.py", "vllm/attention/selector.py", "vllm/engine/arg_utils.py"):
                for name in identifiers_used(src):
                    f.cpu_attention_refs.setdefault(name, path)
            if path.startswith("vllm/entrypoints/"):
                for name in class_fields(src, _REQUEST_CLASSES):
                    f.request_fields.setdefault(name, path)
            if path == "vllm/envs.py":
                f.envs = env_variables(src)
        return f

    def has_flag(self, flag: str) -> str | None:
        """Where ``--flag`` is defined: a literal flag string, or an args dataclass field (vLLM builds its
        flags from ``EngineArgs`` fields from 0.8 on)."""
        if flag in self.flags:
            return f"{self.flags[flag]}: literal {flag!r}"
        name = flag.lstrip("-").replace("-", "_")
        if name in self.arg_fields:
            return f"{self.arg_fields[name]}: field {name}"
        return None

    def source_matching(self, pattern: str, path: str | None = None, then: str | None = None) -> str | None:
        """Where ``pattern`` (a regex over the raw text: a call site, not only a string) first occurs in the file
        ``path`` (every file read when None), as "path:LINE: the line"; with ``then``, only a match followed
        within 300 characters by the regex ``then`` counts (the value a fallback assigns after its message)."""
        rx, after = re.compile(pattern), re.compile(then) if then else None
        for name in ([path] if path else sorted(self.files)):
            src = self.files.get(name)
            if src is None:
                continue
            for m in rx.finditer(src):
                if after is not None and not after.search(src, m.start(), m.end() + 300):
                    continue
                line = src.count("\n", 0, m.start()) + 1
                text = src.splitlines()[line - 1].strip()
                return f"{name}:{line}: {text[:100]!r}"
        return None

    def string_matching(self, pattern: str) -> str | None:
        rx = re.compile(pattern)
        for path, s in self.strings:
            if rx.search(s.replace("%s", "{}").replace("%d", "{}")):
                return f"{path}: {s.strip()[:100]!r}"
        return None
