#!/usr/bin/env python3
"""Checks the C++ tree for the CUDA rules that a host compiler does not enforce.

CI has no Kokkos with CUDA, so nvcc never sees this code there. Each rule below is a mistake that
a Serial/OpenMP build compiles and runs correctly and a CUDA build rejects or gets wrong:

  lambda-access      KOKKOS_LAMBDA / KOKKOS_CLASS_LAMBDA in a private or protected member
                     function (nvcc: "the enclosing parent function ... for an extended
                     __host__ __device__ lambda cannot have private or protected access").
  lambda-constructor the same in a constructor or destructor (nvcc rejects extended lambdas
                     there).
  reducer-space      a Kokkos reducer (Max, Min, Sum, ...) built over a device View without naming
                     its memory space: the reducer's space defaults to HostSpace, so with CUDA the
                     View does not convert ("View assignment must have compatible spaces").
  deep-copy-async    deep_copy(space, dst, src) into host memory with no fence after it in the same
                     function: asynchronous on a GPU stream, synchronous on Serial.
  deep-copy-strided  deep_copy between a host and a device View where one side is a strided
                     subview: Kokkos has no copy mechanism across memory spaces for it (a run-time
                     abort on GPUs only).
  host-only-kokkos   a translation unit listed in CMake's SAESCALE_HOST_SOURCES (compiled by the
                     host compiler alone) includes a Kokkos header, directly or through ours.

The checker reads the code as tokens with a small scope parser (namespaces, classes and their
access sections, functions, lambdas) and a table of declared types: View aliases are device Views
unless they name HostSpace or are HostMirrors. Usage:

  tools/cuda_rules.py [--root DIR] [PATH ...]     (default: kernels src tests benchmarks)

Prints one line per violation (file:line: rule: message) and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_SUFFIXES = {".cpp", ".hpp", ".h", ".cc", ".cxx"}
LAMBDA_MACROS = {"KOKKOS_LAMBDA", "KOKKOS_CLASS_LAMBDA"}
# Reducers and the number of template arguments before their optional memory space.
REDUCERS = {"Max": 1, "Min": 1, "Sum": 1, "Prod": 1, "LAnd": 1, "LOr": 1, "BAnd": 1, "BOr": 1,
            "MinMax": 1, "MinLoc": 2, "MaxLoc": 2, "MinMaxLoc": 2}
ARITHMETIC = {"int", "long", "short", "char", "bool", "float", "double", "unsigned", "signed",
              "size_t", "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t",
              "uint32_t", "uint64_t", "real", "Index", "ptrdiff_t"}
CONTROL = {"if", "for", "while", "switch", "catch", "do", "else", "try", "return"}
DEVICE, HOST, SCALAR, UNKNOWN = "device", "host", "scalar", "unknown"


@dataclass
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


# ---- text -----------------------------------------------------------------------------------------

def strip_code(text: str) -> str:
    """Comments and string/char literals blanked (newlines kept, so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"' or (c == "'" and not (i > 0 and text[i - 1].isalnum())):
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j - 1]) + c)
            i = j
        elif c == "#":  # preprocessor lines are not code (their includes are read separately)
            j = i
            while True:
                k = text.find("\n", j)
                if k < 0:
                    k = n
                    break
                if text[k - 1] != "\\":
                    break
                j = k + 1
            out.append(re.sub(r"[^\n]", " ", text[i:k]))
            i = k
        else:
            out.append(c)
            i += 1
    return "".join(out)


TOKEN = re.compile(r"[A-Za-z_]\w*|\d[\w.']*|::|->|&&|\|\||<<|>>|\S")


@dataclass
class Token:
    text: str
    line: int
    pos: int


def tokenize(code: str) -> list[Token]:
    tokens = []
    line, last = 1, 0
    for m in TOKEN.finditer(code):
        line += code.count("\n", last, m.start())
        last = m.start()
        tokens.append(Token(m.group(), line, m.start()))
    return tokens


def match_close(tokens: list[Token], i: int, open_: str, close: str) -> int:
    """Index of the token closing tokens[i] (== open_)."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].text == open_:
            depth += 1
        elif tokens[j].text == close:
            depth -= 1
            if depth == 0:
                return j
    return len(tokens) - 1


def split_args(tokens: list[Token]) -> list[list[Token]]:
    """Top-level comma-separated pieces of a token list (brackets of every kind nest)."""
    pieces, cur, depth = [], [], 0
    for t in tokens:
        if t.text in "([{<":
            depth += 1
        elif t.text in ")]}>":
            depth -= 1
        elif t.text == ">>":
            depth -= 2
        if t.text == "," and depth == 0:
            pieces.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        pieces.append(cur)
    return pieces


# ---- scopes ---------------------------------------------------------------------------------------

@dataclass
class Scope:
    kind: str  # namespace, class, function, lambda, block
    name: str = ""
    owner: str = ""  # a function's class
    access: str = "public"  # a class's current access section / a function's access
    ctor: bool = False
    start: int = 0  # token index of '{'
    end: int = 0  # token index of '}'
    parent: "Scope | None" = None
    decl_access: dict = field(default_factory=dict)  # class: member name -> access


class FileModel:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.code = strip_code(text)
        self.tokens = tokenize(self.code)
        self.scopes: list[Scope] = []
        self.scope_at: list[Scope | None] = [None] * len(self.tokens)
        self.classes: dict[str, Scope] = {}
        self._parse()

    def _classify(self, head: list[Token], parent: Scope | None) -> Scope:
        texts = [t.text for t in head]
        if not texts:
            return Scope("block")
        if "namespace" in texts:
            return Scope("namespace")
        if any(m in texts for m in LAMBDA_MACROS):
            return Scope("lambda")
        if texts[0] in CONTROL or texts[-1] in ("else", "try", "do"):
            return Scope("block")
        for kw in ("class", "struct", "union"):
            if kw in texts and "(" not in texts[: texts.index(kw)] and "enum" not in texts:
                k = texts.index(kw)
                name = next((t for t in texts[k + 1:] if re.match(r"[A-Za-z_]\w*$", t)
                             and t not in ("final", "alignas")), "")
                return Scope("class", name=name, access="private" if kw == "class" else "public")
        if "enum" in texts or "=" in texts and "(" not in texts:
            return Scope("block")
        # A lambda: '[' captures ']' somewhere in the head (after '=' or '(' or ',').
        if "[" in texts and "]" in texts and texts.index("[") < len(texts) - 1:
            k = texts.index("[")
            if k == 0 or texts[k - 1] in ("=", "(", ",", "return", "{"):
                return Scope("lambda")
        # A function: name '(' params ')' qualifiers [: ctor-inits]
        depth, close = 0, -1
        for k, t in enumerate(texts):
            if t == "(":
                if depth == 0 and close < 0:
                    open_k = k
                depth += 1
            elif t == ")":
                depth -= 1
                if depth == 0 and close < 0:
                    close = k
        if close < 0:
            return Scope("block")
        name_k = open_k - 1
        if name_k < 0 or not re.match(r"[A-Za-z_~]\w*$", texts[name_k]):
            if name_k >= 1 and texts[name_k - 1] == "operator":
                name_k -= 1
            else:
                return Scope("block")
        name = texts[name_k]
        dtor = name_k >= 1 and texts[name_k - 1] == "~"
        owner = ""
        if name_k >= 2 and texts[name_k - 1 - dtor] == "::":
            owner = texts[name_k - 2 - dtor]
        elif parent is not None and parent.kind == "class":
            owner = parent.name
        if name in CONTROL or name in ("sizeof", "decltype", "alignof"):
            return Scope("block")
        ctor = dtor or (owner != "" and name == owner)
        return Scope("function", name=("~" if dtor else "") + name, owner=owner, ctor=ctor)

    def _parse(self) -> None:
        stack: list[Scope] = []
        head: list[Token] = []
        saved_heads: list[list[Token] | None] = []
        toks = self.tokens
        for i, t in enumerate(toks):
            cur = stack[-1] if stack else None
            self.scope_at[i] = cur
            if t.text == "{":
                texts = [h.text for h in head]
                init_brace = (texts and re.match(r"[\w>]", texts[-1]) and ")" in texts
                              and ":" in texts[texts.index(")"):]
                              and cur is not None and cur.kind in ("namespace", "class")
                              and texts[0] not in CONTROL)
                if init_brace:  # a brace initialiser in a constructor's initialiser list
                    s = Scope("block", parent=cur, start=i)
                    saved_heads.append(head + [t])
                else:
                    s = self._classify(head, cur)
                    s.parent, s.start = cur, i
                    if s.kind == "function" and cur is not None and cur.kind == "class":
                        s.access = cur.access
                        cur.decl_access[s.name] = cur.access
                    saved_heads.append(None)
                    if s.kind == "class" and s.name:
                        self.classes.setdefault(s.name, s)
                stack.append(s)
                self.scopes.append(s)
                head = []
            elif t.text == "}":
                if stack:
                    s = stack.pop()
                    s.end = i
                    saved = saved_heads.pop()
                    head = saved[:] if saved is not None else []
                    if saved is not None:
                        head.append(t)
                else:
                    head = []
            elif t.text == ";":
                if cur is not None and cur.kind == "class":
                    self._member_declaration(head, cur)
                head = []
            elif (t.text in ("public", "private", "protected") and cur is not None
                  and cur.kind == "class" and i + 1 < len(toks) and toks[i + 1].text == ":"):
                cur.access = t.text
                head = []
            elif t.text == ":" and head and head[-1].text in ("public", "private", "protected"):
                head = []
            else:
                head.append(t)

    @staticmethod
    def _member_declaration(head: list[Token], cls: Scope) -> None:
        texts = [h.text for h in head]
        if "(" not in texts:
            return
        k = texts.index("(")
        if k >= 1 and re.match(r"[A-Za-z_~]\w*$", texts[k - 1]):
            name = texts[k - 1]
            if k >= 2 and texts[k - 2] == "~":
                name = "~" + name
            cls.decl_access.setdefault(name, cls.access)

    def enclosing_function(self, i: int) -> Scope | None:
        s = self.scope_at[i]
        while s is not None and s.kind in ("lambda", "block"):
            s = s.parent
        return s if s is not None and s.kind == "function" else None


# ---- types ----------------------------------------------------------------------------------------

class Types:
    """What the tree declares: View aliases (device or host), members and function results."""

    def __init__(self, models: list[FileModel]):
        self.aliases: dict[str, str] = {}
        self.members: dict[str, str] = {}
        alias = re.compile(r"\busing\s+(\w+)\s*=\s*([^;]+);")
        for m in models:
            for a in alias.finditer(m.code):
                cat = self.view_category(a.group(2))
                if cat in (DEVICE, HOST):
                    self.aliases[a.group(1)] = cat
        for _ in range(2):  # aliases of aliases
            for m in models:
                for a in alias.finditer(m.code):
                    if a.group(1) not in self.aliases:
                        cat = self.type_category(a.group(2))
                        if cat in (DEVICE, HOST):
                            self.aliases[a.group(1)] = cat
        # Members and member functions: `Type name;`, `Type name(...) const {` in class bodies.
        decl = re.compile(r"(?:^|(?<=[;{}:]))\s*((?:const\s+)?[\w:]+(?:\s*<[^;{}()]*>)?(?:::\w+)?)"
                          r"\s*[&*]?\s+(\w+)\s*(?:;|\(\)\s*const|\{|=)")
        for m in models:
            for d in decl.finditer(m.code):
                cat = self.type_category(d.group(1))
                if cat != UNKNOWN and d.group(2) not in self.members:
                    self.members[d.group(2)] = cat

    @staticmethod
    def view_category(text: str) -> str:
        text = " ".join(text.split())
        if "HostMirror" in text or "HostSpace" in text:
            return HOST
        if re.search(r"\bKokkos::View\s*<", text):
            return DEVICE  # MemSpace, or no space: the default execution space's memory
        return UNKNOWN

    def type_category(self, text: str) -> str:
        text = " ".join(text.replace("const ", "").split())
        cat = self.view_category(text)
        if cat != UNKNOWN:
            return cat
        base = re.sub(r"<.*", "", text).split("::")[-1].strip(" &*")
        if base in self.aliases:
            return self.aliases[base]
        if base in ARITHMETIC or base.endswith("_t") and base in ARITHMETIC:
            return SCALAR
        return UNKNOWN

    def expression(self, model: FileModel, toks: list[Token]) -> str:
        """The category of an expression: an identifier, a.b, f(...), subview(x, ...)."""
        texts = [t.text for t in toks]
        if not texts:
            return UNKNOWN
        if texts[0] == "Kokkos" and len(texts) > 2 and texts[2] in (
                "subview", "create_mirror_view", "create_mirror", "create_mirror_view_and_copy"):
            if texts[2] != "subview":
                inner = split_args(toks[4:-1])
                if inner and "HostSpace" in [t.text for t in inner[0]]:
                    return HOST
                return HOST if texts[2].startswith("create_mirror") else UNKNOWN
            inner = split_args(toks[4:-1])
            return self.expression(model, inner[0]) if inner else UNKNOWN
        if len(texts) == 1 and re.match(r"[A-Za-z_]\w*$", texts[0]):
            return self.identifier(model, texts[0], toks[0].pos)
        # a.b.c / a->b / a.b() : the last member decides
        if "(" in texts and texts[-1] == ")":
            k = texts.index("(")
            name = texts[k - 1] if k >= 1 else ""
            return self.members.get(name, UNKNOWN)
        if len(texts) >= 3 and texts[-2] in (".", "->"):
            return self.members.get(texts[-1], UNKNOWN)
        return UNKNOWN

    def identifier(self, model: FileModel, name: str, pos: int) -> str:
        """The category of `name` from its nearest declaration before `pos` in the file."""
        code = model.code[:pos]
        pattern = re.compile(
            r"((?:const\s+)?(?:[\w:]+)(?:\s*<[^;{}]*?>)?(?:::\w+)?)\s*[&*]?\s*\b" + re.escape(name)
            + r"\s*(=\s*([^;]+)|[;,)({\[])")
        best = None
        for m in pattern.finditer(code):
            best = m
        if best is None:
            return self.members.get(name, UNKNOWN)
        type_text = best.group(1).strip()
        if type_text.endswith("auto") and best.group(3):
            toks = [t for t in model.tokens if best.start(3) <= t.pos < best.end(3)]
            return self.expression(model, toks) if toks else UNKNOWN
        if type_text in ("return", "else", "case"):
            return UNKNOWN
        return self.type_category(type_text)


# ---- rules ----------------------------------------------------------------------------------------

def rule_lambdas(model: FileModel, all_classes: dict[str, Scope]) -> list[Violation]:
    out = []
    for i, t in enumerate(model.tokens):
        if t.text not in LAMBDA_MACROS:
            continue
        fn = model.enclosing_function(i)
        if fn is None or not fn.owner:
            continue
        if fn.ctor:
            out.append(Violation(str(model.path), t.line, "lambda-constructor",
                                 f"{t.text} in {fn.owner}::{fn.name}, a constructor or destructor: "
                                 "nvcc rejects extended lambdas there; move the kernel into a "
                                 "free function (kernels/) or a public member"))
            continue
        cls = all_classes.get(fn.owner)
        access = fn.access if fn.parent is not None and fn.parent.kind == "class" else (
            cls.decl_access.get(fn.name, "public") if cls is not None else "public")
        if access != "public":
            out.append(Violation(str(model.path), t.line, "lambda-access",
                                 f"{t.text} in {access} member function {fn.owner}::{fn.name}: "
                                 "nvcc rejects extended lambdas in non-public member functions; "
                                 "move the kernel into a free function (kernels/)"))
    return out


def rule_reducers(model: FileModel, types: Types) -> list[Violation]:
    out = []
    toks = model.tokens
    for i in range(len(toks) - 3):
        if not (toks[i].text == "Kokkos" and toks[i + 1].text == "::"
                and toks[i + 2].text in REDUCERS and toks[i + 3].text == "<"):
            continue
        close = match_close(toks, i + 3, "<", ">")
        targs = split_args(toks[i + 4:close])
        if close + 1 >= len(toks) or toks[close + 1].text not in ("(", "{"):
            continue
        end = match_close(toks, close + 1, toks[close + 1].text,
                          ")" if toks[close + 1].text == "(" else "}")
        args = split_args(toks[close + 2:end])
        if len(targs) > REDUCERS[toks[i + 2].text] or not args:
            continue  # the memory space is named
        cat = types.expression(model, args[0])
        if cat == DEVICE:
            expr = " ".join(t.text for t in args[0])
            out.append(Violation(str(model.path), toks[i].line, "reducer-space",
                                 f"Kokkos::{toks[i + 2].text} over the device View '{expr}' "
                                 "without a memory space: the reducer defaults to HostSpace; "
                                 f"write Kokkos::{toks[i + 2].text}<..., MemSpace>"))
    return out


def contiguous_subview(args: list[list[Token]]) -> bool:
    """A LayoutRight subview is contiguous when it fixes leading indices, then takes one range,
    then whole extents (ALL)."""
    kinds = []
    for a in args[1:]:
        texts = [t.text for t in a]
        if texts[-1:] == ["ALL"] or texts == ["Kokkos", "::", "ALL"]:
            kinds.append("all")
        elif "pair" in texts or "make_pair" in texts or texts[:1] == ["{"]:
            kinds.append("range")
        else:
            kinds.append("index")
    k = 0
    while k < len(kinds) and kinds[k] == "index":
        k += 1
    if k < len(kinds):
        k += 1
    return all(x == "all" for x in kinds[k:])


def rule_deep_copies(model: FileModel, types: Types) -> list[Violation]:
    out = []
    toks = model.tokens
    for i in range(len(toks) - 3):
        if not (toks[i].text == "Kokkos" and toks[i + 1].text == "::"
                and toks[i + 2].text == "deep_copy" and toks[i + 3].text == "("):
            continue
        end = match_close(toks, i + 3, "(", ")")
        args = split_args(toks[i + 4:end])
        if len(args) == 3:  # deep_copy(space, dst, src): asynchronous on that space's stream
            dst = types.expression(model, args[1])
            if dst in (HOST, SCALAR):
                fn = model.enclosing_function(i) or model.scope_at[i]
                stop = fn.end if fn is not None else len(toks)
                later = [t.text for t in toks[end:stop]]
                if "fence" not in later:
                    out.append(Violation(str(model.path), toks[i].line, "deep-copy-async",
                                         "deep_copy(space, host destination, ...) is asynchronous "
                                         "on a GPU: fence that space before reading the "
                                         "destination"))
            args = args[1:]
        if len(args) != 2:
            continue
        cats = [types.expression(model, a) for a in args]
        if set(cats) != {DEVICE, HOST}:
            continue
        for a in args:
            texts = [t.text for t in a]
            if texts[:3] == ["Kokkos", "::", "subview"]:
                inner = split_args(a[4:-1])
                if not contiguous_subview(inner):
                    out.append(Violation(str(model.path), toks[i].line, "deep-copy-strided",
                                         "deep_copy between host and device Views with a strided "
                                         f"subview ({' '.join(texts)}): no copy mechanism across "
                                         "memory spaces; copy a contiguous View instead"))
    return out


INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def rule_host_only(root: Path) -> list[Violation]:
    cmake = root / "CMakeLists.txt"
    if not cmake.exists():
        return []
    m = re.search(r"set\(SAESCALE_HOST_SOURCES\s+([^)]*)\)", cmake.read_text())
    if not m:
        return []
    out = []
    for rel in m.group(1).split():
        seen: set[Path] = set()
        chain = kokkos_chain(root, root / rel, seen)
        if chain:
            out.append(Violation(rel, 1, "host-only-kokkos",
                                 "a host-only source (SAESCALE_HOST_SOURCES) includes Kokkos: "
                                 + " -> ".join(chain)))
    return out


def kokkos_chain(root: Path, path: Path, seen: set[Path]) -> list[str]:
    if path in seen or not path.exists():
        return []
    seen.add(path)
    for kind, name in INCLUDE.findall(path.read_text(errors="replace")):
        if kind == "<" and name.startswith("Kokkos"):
            return [name]
        if kind == '"':
            for base in (path.parent, root, root / "src"):
                cand = (base / name).resolve()
                if cand.exists():
                    sub = kokkos_chain(root, cand, seen)
                    if sub:
                        return [str(cand.relative_to(root.resolve()))] + sub
                    break
    return []


# ---- driver ---------------------------------------------------------------------------------------

def collect(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in SOURCE_SUFFIXES)
        elif p.suffix in SOURCE_SUFFIXES:
            files.append(p)
    return files


def check(root: Path, paths: list[Path]) -> tuple[list[Violation], dict]:
    files = collect(paths)
    models = [FileModel(f, f.read_text(errors="replace")) for f in files]
    types = Types(models)
    classes: dict[str, Scope] = {}
    for m in models:
        for name, s in m.classes.items():
            if name in classes:  # two classes of one name: merge what is declared where
                for k, v in s.decl_access.items():
                    classes[name].decl_access.setdefault(k, v)
            else:
                classes[name] = s
    violations = []
    for m in models:
        violations += rule_lambdas(m, classes)
        violations += rule_reducers(m, types)
        violations += rule_deep_copies(m, types)
    violations += rule_host_only(root)
    counts = {
        "files": len(models),
        "lambdas": sum(t.text in LAMBDA_MACROS for m in models for t in m.tokens),
        "reducers": sum(1 for m in models for k, t in enumerate(m.tokens)
                        if t.text in REDUCERS and k >= 2 and m.tokens[k - 1].text == "::"),
        "deep_copies": sum(t.text == "deep_copy" for m in models for t in m.tokens),
    }
    return violations, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="the repository (CMakeLists.txt with SAESCALE_HOST_SOURCES)")
    ap.add_argument("paths", nargs="*", type=Path, help="files or folders (default: kernels src "
                    "tests benchmarks under --root)")
    args = ap.parse_args(argv)
    paths = args.paths or [args.root / d for d in ("kernels", "src", "tests", "benchmarks")]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"cuda_rules: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    violations, counts = check(args.root, paths)
    for v in violations:
        print(v)
    print(f"cuda-rules: {counts['files']} files, {counts['lambdas']} device lambdas, "
          f"{counts['reducers']} reducers, {counts['deep_copies']} deep_copies checked: "
          f"{len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
