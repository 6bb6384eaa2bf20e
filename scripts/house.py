"""The house's figures (docs/architecture.md): lines of code per crate, files over 500 lines, the
largest functions, the imports between crates and the import cycles between a crate's modules.

    python3 scripts/house.py           # the figures, as Markdown
    python3 scripts/house.py --check   # fails when a cycle exists, a crate imports another
                                       # binary's crate, a function has 80 lines or more, or
                                       # an invariant of docs/architecture.md does not hold

A function's lines run from its `fn` line to its closing brace, comments and blank lines
included; a module is a file (or folder) directly under a crate's `src/`, and it imports another
when it names `crate::<other>`."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Crate folder → crate name as other crates import it.
CRATES = {"core": "lossbench_core", "data-prep": "data_prep", "collector": "collector", ".": "lossbench",
          "tuner": "tuner", "fuzzing": "fuzzing"}
BINARIES = {"data-prep", "collector", ".", "tuner"}
MAX_FUNCTION_LINES = 80


def sources(crate: str) -> list[Path]:
    return sorted((ROOT / crate / "src").rglob("*.rs"))


def code_lines(text: str, literals: list[tuple[int, str]] | None = None) -> list[str]:
    """The file's lines with comments, string and char literals blanked (line breaks kept), so
    that braces and names count as code only; each string literal's (line, text) is appended to
    `literals` when given."""
    out, i, n = [], 0, len(text)

    def keep(start: int, end: int):
        if literals is not None:
            literals.append((text.count("\n", 0, start) + 1, text[start:end]))
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            j = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if j < 0 else j + 1 + len(hashes)
            keep(i + 2 + len(hashes), j - 1 - len(hashes))
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            keep(i + 1, j)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]):
            j = text.find("'", i + 2 if text[i + 1] != "\\" else i + 3) + 1
            out.append("''")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out).split("\n")


def functions(path: Path) -> list[tuple[int, str, int]]:
    """(line, name, length) of every function of a file, test modules left out."""
    lines = code_lines(path.read_text())
    out, i = [], 0
    in_tests = None
    while i < len(lines):
        code = lines[i]
        if re.match(r"\s*#\[cfg\(test\)\]", lines[i]):
            in_tests = True
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", code)
        if m and not in_tests:
            depth, j, opened = 0, i, False
            while j < len(lines):
                c = lines[j]
                depth += c.count("{") - c.count("}")
                opened = opened or "{" in c
                if opened and depth <= 0:
                    break
                if not opened and c.rstrip().endswith(";"):
                    break  # a declaration without a body
                j += 1
            if opened:
                out.append((i + 1, m.group(6), j - i + 1))
            i = j + 1
            continue
        i += 1
    return out


def module_path(crate: str, path: Path) -> tuple[str, ...] | None:
    """The module a file is (`src/data/shared.rs` → ("data", "shared"), a folder's `mod.rs` the
    folder's), `()` for the crate root; None for a binary's file."""
    rel = path.relative_to(ROOT / crate / "src")
    if rel.parts[0] == "bin":
        return None
    parts = list(rel.parts)
    parts[-1] = parts[-1].removesuffix(".rs")
    if parts[-1] in ("mod", "lib", "main") and (parts[-1] == "mod" or len(parts) == 1):
        parts.pop()
    return tuple(parts)


def referenced(module: tuple[str, ...], code: str, children: set[str]) -> set[tuple[str, ...]]:
    """Module paths a file's code names: `crate::a::b`, `super::x`, `self::x` and `child::x`
    (a module it declares), groups `crate::{a, b::c}` expanded one level."""
    out = set()
    prefixes = {"crate": (), "self": module}

    def add(start: tuple[str, ...], rest: str):
        out.add(start + tuple(p for p in rest.split("::") if p))

    for m in re.finditer(r"\b((?:super::)+|crate::|self::|(\w+)::)(\{[^}]*\}|[\w:]*\w)", code):
        head, child, tail = m.group(1), m.group(2), m.group(3)
        if head.startswith("super::"):
            ups = head.count("super::")
            start = module[:len(module) - ups] if ups <= len(module) else ()
        elif head in ("crate::", "self::"):
            start = prefixes[head[:-2]]
        elif child in children:
            start, tail = module, f"{child}::{tail}"
        else:
            continue
        if tail.startswith("{"):
            for item in re.findall(r"(?:^|,)\s*([\w:]+)", tail[1:-1]):
                add(start, item)
        else:
            add(start, tail)
    return out


def module_graphs(crate: str) -> dict[tuple[str, ...], dict[str, set[str]]]:
    """For every folder module (the crate root included): its child modules and which of them
    use which (a use anywhere inside a child counts for the child). A child's use of its
    parent, and the parent's of its children, are not edges: only siblings form cycles."""
    files = {module_path(crate, p): p for p in sources(crate)}
    files.pop(None, None)
    known = set(files)
    graphs: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for module in known:
        if module:
            graphs.setdefault(module[:-1], {}).setdefault(module[-1], set())
    for module, path in files.items():
        text = path.read_text().split("\n#[cfg(test)]")[0]
        code = "\n".join(code_lines(text))
        children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+);", code, re.M))
        for target in referenced(module, code, children):
            while target and target not in known:
                target = target[:-1]
            k = 0
            while k < min(len(module), len(target)) and module[k] == target[k]:
                k += 1
            if k < len(module) and k < len(target):
                graphs.setdefault(module[:k], {}).setdefault(module[k], set()).add(target[k])
    return graphs


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def crate_imports() -> dict[str, set[str]]:
    """Crate → the other crates its library and binaries import (tests left out)."""
    out = {}
    for crate in CRATES:
        text = "\n".join(p.read_text().split("\n#[cfg(test)]")[0] for p in sources(crate))
        out[crate] = {c for c, name in CRATES.items() if c != crate and re.search(rf"\b{name}::", text)}
    return out


def non_test_literals(crate: str) -> list[tuple[str, int, str]]:
    """(file, line, text) of every string literal of a crate's library and binaries, test
    modules left out."""
    out = []
    for p in sources(crate):
        found: list[tuple[int, str]] = []
        if p.name == "tests.rs":
            continue
        code_lines(p.read_text().split("\n#[cfg(test)]")[0], found)
        out += [(p.relative_to(ROOT).as_posix(), line, text) for line, text in found]
    return out


def config_sections() -> list[str]:
    """The job config's sections: the fields of core's `Config`."""
    text = (ROOT / "core/src/config/mod.rs").read_text()
    body = re.search(r"pub struct Config \{(.*?)\n\}", text, re.S).group(1)
    return [f for f in re.findall(r"^\s*pub (\w+):", body, re.M) if f != "sources"]


def run_folder_files() -> set[str]:
    """The names of a run folder's files, as core defines them (`const …FILE: &str = "…"`)."""
    names = set()
    for p in sources("core"):
        names |= set(re.findall(r'const \w*FILE: &str = "([^"]+)"', p.read_text()))
    return names


def core_users() -> dict[str, set[str]]:
    """Each module of core → the crates (and core modules) whose code names it, tests included."""
    modules = {module_path("core", p)[0] for p in sources("core") if module_path("core", p)}
    users: dict[str, set[str]] = {m: set() for m in modules}
    for crate in CRATES:
        paths = sources(crate) + sorted((ROOT / crate / "tests").rglob("*.rs"))
        for p in paths:
            code = "\n".join(code_lines(p.read_text()))
            for m in modules:
                own = crate == "core" and module_path("core", p) and module_path("core", p)[0] == m
                pattern = rf"\bcrate::{m}\b" if crate == "core" else rf"\blossbench_core::(\{{[^}}]*\b)?{m}\b"
                if not own and re.search(pattern, code):
                    users[m].add(f"core::{module_path('core', p)[0]}" if crate == "core" else CRATES[crate])
    return users


ARCHITECTURE = ROOT / "docs/architecture.md"
# Crate folder → the heading of its section in docs/architecture.md.
SECTIONS = {"core": "## lossbench-core", "data-prep": "## data-prep", ".": "## lossbench, the trainer",
            "collector": "## collector", "tuner": "## tuner"}


def documented_rows(crate: str) -> list[set[str]]:
    """The modules named in the first column of each row of a crate's table in
    docs/architecture.md, row by row (a folder's `name/` as `name`)."""
    text = ARCHITECTURE.read_text()
    section = text[text.index(SECTIONS[crate]):]
    section = section[:section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    rows = []
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 2:
            first = re.sub(r"\([^)]*\)", "", cells[1])
            rows.append({m.rstrip("/") for m in re.findall(r"`([\w/]+)`", first)})
    return rows


def documentation_breaks() -> list[str]:
    """Top-level modules missing from their crate's table; in the trainer's table, a module
    using one listed in a row above its own."""
    out = []
    for crate in SECTIONS:
        modules = {m[0] for m in map(lambda p: module_path(crate, p), sources(crate)) if m}
        listed = set().union(*documented_rows(crate))
        out += [f"{CRATES[crate]}::{m} is not in docs/architecture.md" for m in sorted(modules - listed)]
        out += [f"docs/architecture.md names {CRATES[crate]}::{m}, which does not exist"
                for m in sorted(listed - modules)]
    rows = documented_rows(".")
    row_of = {m: i for i, row in enumerate(rows) for m in row}
    for m, deps in module_graphs(".").get((), {}).items():
        for d in sorted(deps):
            if m in row_of and d in row_of and row_of[d] <= row_of[m]:
                out.append(f"lossbench::{m} uses {d}, listed in its row or above it")
    return out


def absences() -> list[tuple[str, list[str]]]:
    """The house's invariants, each stated as an absence (docs/architecture.md), with what
    breaks it."""
    sections = "|".join(config_sections())
    key = re.compile(rf"({sections})\.[a-z_][a-z0-9_.]*(=.*)?")
    file_name = re.compile(r".*\.(json|jsonl|csv|toml|parquet|safetensors|png|html)")
    keys = [f"{f}:{line}: \"{t}\"" for crate in CRATES for f, line, t in non_test_literals(crate)
            if key.fullmatch(t) and not file_name.fullmatch(t) and not f.startswith("core/src/config/")]
    files = run_folder_files()
    named = [f"{f}:{line}: \"{t}\"" for crate in CRATES if crate != "core"
             for f, line, t in non_test_literals(crate) if t in files or t.split("/")[-1] in files]
    single = [f"core::{m} is named only by {', '.join(sorted(u)) or 'nothing'}"
              for m, u in sorted(core_users().items()) if len(u) < 2 and not any(x.startswith("core::") for x in u)]
    return [
        ("No code outside core's `config` names a config key", keys),
        ("No binary names a run folder's file (they go through core)", named),
        ("Core holds nothing that one binary alone uses", single),
        ("docs/architecture.md lists every module, the trainer's in the order they use each other",
         documentation_breaks()),
    ]


def main():
    check = "--check" in sys.argv
    problems = []
    print("| crate | files | lines | largest function | lines |\n|---|---|---|---|---|")
    long_files, all_functions = [], []
    for crate in CRATES:
        files = sources(crate)
        lines = sum(len(p.read_text().splitlines()) for p in files)
        fns = [(n, p.relative_to(ROOT).as_posix(), line, name) for p in files for line, name, n in functions(p)]
        all_functions += fns
        top = max(fns, default=(0, "", 0, ""))
        print(f"| {CRATES[crate]} | {len(files)} | {lines:,} | `{top[3]}` ({top[1]}:{top[2]}) | {top[0]} |")
        long_files += [(len(p.read_text().splitlines()), p.relative_to(ROOT).as_posix()) for p in files
                       if len(p.read_text().splitlines()) > 500]
    print("\nFiles over 500 lines:", ", ".join(f"{f} ({n})" for n, f in sorted(long_files, reverse=True)) or "none")
    print("\nLargest functions:")
    for n, f, line, name in sorted(all_functions, reverse=True)[:8]:
        print(f"- `{name}` {f}:{line}: {n} lines")
    for n, f, line, name in all_functions:
        if n >= MAX_FUNCTION_LINES and not f.startswith("fuzzing/"):
            problems.append(f"{f}:{line}: fn {name} has {n} lines (at most {MAX_FUNCTION_LINES - 1})")
    print("\nImports between crates (library and binary code):")
    for crate, deps in crate_imports().items():
        print(f"- {CRATES[crate]} → {', '.join(sorted(CRATES[d] for d in deps)) or 'none'}")
        for d in deps & BINARIES:
            if crate != "fuzzing":
                problems.append(f"{CRATES[crate]} imports the binary crate {CRATES[d]}")
    print("\nImport cycles between sibling modules, at every level:")
    found = False
    for crate in CRATES:
        for parent, graph in sorted(module_graphs(crate).items()):
            for c in cycles(graph):
                found = True
                where = "::".join((CRATES[crate],) + parent)
                print(f"- {where}: {' ↔ '.join(c)}")
                problems.append(f"{where}: import cycle {' ↔ '.join(c)}")
    if not found:
        print("none")
    print("\nInvariants, as absences:")
    for rule, breaks in absences():
        print(f"- {rule}: {'holds' if not breaks else f'{len(breaks)} exceptions'}")
        for b in breaks:
            print(f"  - {b}")
            problems.append(f"{rule}: {b}")
    if check and problems:
        print("\n" + "\n".join(problems), file=sys.stderr)
        sys.exit(1)


main()
