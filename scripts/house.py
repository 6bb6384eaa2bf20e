"""The house's figures (docs/architecture.md): lines of code per crate, files over 500 lines, the
largest functions, the imports between crates and the import cycles between a crate's modules.

    python3 scripts/house.py           # the figures, as Markdown
    python3 scripts/house.py --check   # fails when a cycle exists, a crate imports another
                                       # binary's crate, or a function has 80 lines or more

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


def code_lines(text: str) -> list[str]:
    """The file's lines with comments, string and char literals blanked (line breaks kept), so
    that braces and names count as code only."""
    out, i, n = [], 0, len(text)
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
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
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


def module_of(crate: str, path: Path) -> str:
    rel = path.relative_to(ROOT / crate / "src")
    return rel.parts[0].removesuffix(".rs") if len(rel.parts) > 1 or rel.stem not in ("lib", "main") else rel.stem


def module_imports(crate: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sources(crate):
        mod = module_of(crate, path)
        if mod == "bin":
            continue
        text = "\n".join(code_lines(path.read_text().split("\n#[cfg(test)]")[0]))
        used = set(re.findall(r"crate::(\w+)", text))
        # `use crate::{a, b::c}` groups.
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            used.update(re.findall(r"(?:^|,)\s*(\w+)", group))
        graph.setdefault(mod, set()).update(u for u in used if u != mod)
    return graph


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
    print("\nImport cycles between modules:")
    found = False
    for crate in CRATES:
        for c in cycles(module_imports(crate)):
            found = True
            print(f"- {CRATES[crate]}: {' ↔ '.join(c)}")
            problems.append(f"{CRATES[crate]}: import cycle {' ↔ '.join(c)}")
    if not found:
        print("none")
    if check and problems:
        print("\n" + "\n".join(problems), file=sys.stderr)
        sys.exit(1)


main()
