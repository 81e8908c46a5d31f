"""Write every stage's library dependencies in the project's dvc.yaml files from the import graph.

    python scripts/dvc_deps.py           rewrite dvc.yaml, study/dvc.yaml, ranking/dvc.yaml
    python scripts/dvc_deps.py --check   exit 1 and name the stages whose lists differ

A stage depends on its script and on every `transferlab` file that importing the script runs,
directly or through other modules (a package's `__init__.py` included when it runs code; a
docstring-only one changes no behaviour). Imports inside functions are not followed: they run
only if the function does, and following them would make `check_params` depend on torch code.

A registry package whose `__init__.py` imports all of its modules at once (`DISCOVERED`: the
backbones) is depended on as a whole folder: every module of it runs in every stage that
imports the package.

Entries under `transferlab/strategies/` other than `__init__.py` are declared by hand and kept
as written: the registry imports method modules by name (`importlib`), which no static reading
of the imports can see. A stage names the methods it runs (`transferlab/strategies/${key}.py`,
`transferlab/strategies/structure.py`) or the whole folder (`transferlab/strategies`: the params
schema, every cell of the study). Everything else under `transferlab/` in a deps list is
generated: do not edit it by hand (tests/test_generated.py fails when the files differ).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = ("dvc.yaml", "study/dvc.yaml", "ranking/dvc.yaml")
HAND_WRITTEN = re.compile(r"transferlab/strategies(/(?!__init__\.py$)[^/]+)?$")
DISCOVERED = ("transferlab/backbones",)  # packages that import every module of theirs


def module_file(dotted: str) -> Path | None:
    path = ROOT.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_statements(tree: ast.AST):
    """The import statements that run when the module is imported: not those inside functions."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from import_statements(node)


def imports_of(path: Path) -> set[Path]:
    """The transferlab files that importing `path` runs at once (parent packages included)."""
    found = set()
    for node in import_statements(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "transferlab":
                found |= {f for i in range(1, len(parts) + 1)
                          if (f := module_file(".".join(parts[:i]))) is not None}
    return found


def runs_code(path: Path) -> bool:
    """False for a file that holds nothing but a docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def closure(*scripts: Path) -> set[Path]:
    """Every file importing `scripts` runs, the scripts included."""
    needed, todo = set(scripts), list(scripts)
    while todo:
        for path in imports_of(todo.pop()) - needed:
            needed.add(path)
            todo.append(path)
    return needed


def library_deps(script: Path, methods: list[Path], kept: list[str], wdir: Path) -> list[str]:
    """The generated entries for a stage running `script` (and the method modules `methods`
    it runs by name), relative to `wdir`, without what a hand-written entry in `kept` covers."""
    needed = closure(script, *methods) - {script, *methods}
    covered = [wdir / k for k in kept]
    paths = {p.relative_to(ROOT).as_posix() for p in needed
             if runs_code(p) and not any(p == c or c in p.parents for c in covered)}
    for package in DISCOVERED:
        if f"{package}/__init__.py" in paths:
            paths = {p for p in paths if not p.startswith(f"{package}/")} | {package}
    paths = sorted(paths)
    return [Path(os.path.relpath(ROOT / p, wdir)).as_posix() for p in paths]


def stage_bodies(spec: dict) -> dict[str, tuple[dict, list[str]]]:
    """{stage name: (the definition holding cmd and deps, foreach keys or [])}."""
    out = {}
    for name, stage in spec.get("stages", {}).items():
        if "do" in stage:
            keys = stage["foreach"] if isinstance(stage["foreach"], (list, dict)) else []
            out[name] = (stage["do"], list(keys))
        else:
            out[name] = (stage, [])
    return out


def expected(dvc_file: Path) -> list[list[str]]:
    """The generated library entries of each stage, in the file's order."""
    spec = yaml.safe_load(dvc_file.read_text())
    result = []
    for body, keys in stage_bodies(spec).values():
        wdir = (dvc_file.parent / body.get("wdir", ".")).resolve()
        script = wdir / next(t for t in body["cmd"].split() if t.endswith(".py"))
        kept = [d for d in body.get("deps", []) if isinstance(d, str) and HAND_WRITTEN.match(d)]
        methods = []
        for entry in kept:
            if "${key}" in entry:
                methods += [p for k in keys if (p := wdir / entry.replace("${key}", str(k))).is_file()]
            elif (wdir / entry).is_file():
                methods.append(wdir / entry)
        result.append(library_deps(script, methods, kept, wdir))
    return result


def is_library(entry: str) -> bool:
    return entry.split("#")[0].strip().removeprefix("../").startswith("transferlab/")


def rewrite(text: str, generated: list[list[str]]) -> str:
    """`text` with the library entries of the n-th `deps:` list replaced by `generated[n]` and
    its hand-written library entries, sorted, where the first library entry was (after the
    last entry when there was none); comments and every other entry kept as they are."""
    lines, out, n = text.splitlines(keepends=True), [], -1
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not re.match(r"^\s+deps:\s*(#.*)?$", line):
            continue
        n += 1
        block, indent = [], None
        while i < len(lines):
            item = re.match(r"^(\s*)- (.*)$", lines[i])
            if item and indent in (None, item[1]):
                indent = item[1]
            elif not (lines[i].strip().startswith("#") and indent is not None):
                break
            block.append(lines[i])
            i += 1
        library = [k for k, b in enumerate(block)
                   if b.lstrip().startswith("- ") and is_library(b.lstrip()[2:])]
        hand = [block[k].lstrip()[2:].strip() for k in library
                if HAND_WRITTEN.match(block[k].lstrip()[2:].split("#")[0].strip()
                                      .removeprefix("../"))]
        entries = [f"{indent}- {p}\n" for p in sorted(generated[n] + hand)]
        kept = [b for k, b in enumerate(block) if k not in library]
        if library:
            at = sum(1 for k in range(library[0]) if k not in library)
        else:
            at = max(k for k, b in enumerate(kept) if b.lstrip().startswith("- ")) + 1
        kept[at:at] = entries
        out.extend(kept)
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=DVC_FILES, help=f"default: {' '.join(DVC_FILES)}")
    ap.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for rel in args.files:
        path = ROOT / rel
        text = path.read_text()
        new = rewrite(text, expected(path))
        if new != text:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"library deps differ from the import graph in {', '.join(stale)}: "
              "run python scripts/dvc_deps.py", file=sys.stderr)
        return 1
    for rel in stale:
        print(f"rewrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
