"""Write the declarations of the project's dvc.yaml files that follow from code: every stage's
library dependencies (from the import graph) and every list of the default strategies (from the
one list there is: the keys of dvc.yaml's `transfer` foreach).

    python scripts/dvc_deps.py           rewrite dvc.yaml and study/, ranking/, selection/dvc.yaml
    python scripts/dvc_deps.py --check   exit 1 and name the files that differ

Strategy lists: wherever a command or a deps list names several strategies' files in a row
(`models/transfer/<s>.safetensors`, `metrics/transfer/<s>.json`, `plots/curves/<s>.csv`), the
row is rewritten to name exactly the default strategies, in their order (a row is two or more
files: keep at least two strategies in the default pipeline, or one file is not seen as a list). Adding a method to the
default pipeline is then: its module, its params section, one entry in the `transfer` foreach,
and this script.

A stage depends on its script and on every `transferlab` file that importing the script runs,
directly or through other modules (a package's `__init__.py` included when it runs code; a
docstring-only one changes no behaviour). Imports inside functions are not followed: they run
only if the function does, and following them would make `check_params` depend on torch code.

A registry package whose `__init__.py` imports all of its modules at once (`DISCOVERED`: the
backbones, the datasets, the validators) is depended on as a whole folder: every module of it runs in every stage that
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
if __package__ in (None, ""):  # run as a script: the repository's root is not on the path
    sys.path.insert(0, str(ROOT))
DVC_FILES = ("dvc.yaml", "study/dvc.yaml", "ranking/dvc.yaml", "selection/dvc.yaml")
HAND_WRITTEN = re.compile(r"transferlab/strategies(/(?!__init__\.py$)[^/]+)?$")
DISCOVERED = ("transferlab/backbones", "transferlab/datasets", "transferlab/validators")  # packages that import every module of theirs


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


def registry_modules(package: Path) -> list[Path]:
    """The modules a registry package imports by name when it is imported (pkgutil)."""
    return sorted(p for p in package.parent.glob("*.py") if p.name != "__init__.py")


def closure(*scripts: Path) -> set[Path]:
    """Every file importing `scripts` runs, the scripts included. A registry's __init__ imports
    all its modules by name: what they import is followed too (the strategies' options.py), but
    the method modules themselves are left to the hand-written entries."""
    needed, todo, followed = set(scripts), list(scripts), set()
    while todo:
        path = todo.pop()
        found = imports_of(path)
        if path == ROOT / "transferlab/strategies/__init__.py":
            for module in registry_modules(path):
                if module not in followed:
                    followed.add(module)
                    found |= imports_of(module) - {module}
        for new in found - needed:
            needed.add(new)
            todo.append(new)
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
        if "deps" not in body:  # rewrite() numbers the `deps:` lists: skip stages without one
            continue
        wdir = (dvc_file.parent / body.get("wdir", ".")).resolve()
        script = wdir / next(t for t in body["cmd"].split() if t.endswith(".py"))
        kept = [d for d in body.get("deps", []) if isinstance(d, str) and HAND_WRITTEN.match(d)]
        methods = []
        for entry in kept:
            if "${key}" in entry:
                methods += [p for k in keys if (p := wdir / entry.replace("${key}", str(k))).is_file()]
            elif (wdir / entry).is_file():
                methods.append(wdir / entry)
        # other stage scripts it declares: it runs them (selection task@: download, prepare,
        # pretrain in a scratch folder), so what they import is its dependency too
        methods += [wdir / d for d in body.get("deps", []) if isinstance(d, str)
                    and d.startswith("stages/") and d.endswith(".py") and wdir / d != script]
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
        else:  # after the last entry (an empty list: at its start)
            at = max((k + 1 for k, b in enumerate(kept) if b.lstrip().startswith("- ")), default=0)
        kept[at:at] = entries
        out.extend(kept)
    return "".join(out)


STRATEGY_FILES = ("models/transfer/{}.safetensors", "metrics/transfer/{}.json",
                  "plots/curves/{}.csv")


def default_strategies() -> list[str]:
    """The keys of dvc.yaml's `transfer` foreach: the strategies of the default pipeline."""
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["transfer"]["foreach"])


def _file_pattern(template: str, names: list[str]) -> str:
    alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.escape(template).replace(r"\{\}", f"(?:{alternatives})")


def rewrite_strategy_lists(text: str, keys: list[str], names: list[str]) -> str:
    """`text` with every run of two or more strategy files of one kind, in a folded command or
    a deps list, replaced by the files of `keys`; a command that changed is wrapped anew."""
    lines, out, i = text.splitlines(keepends=True), [], 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^\s+cmd:\s*>-?\s*$", line):  # a folded command: lines until a key
            j = i + 1
            indent = re.match(r"^(\s*)", lines[j])[1] if j < len(lines) else ""
            while j < len(lines) and lines[j].startswith(indent) and lines[j].strip() \
                    and not re.match(r"^\s*[\w-]+:(\s|$)", lines[j]):
                j += 1
            tokens = " ".join(lines[i + 1:j]).split()
            new = _replace_runs(tokens, keys, names)
            out.append(line)
            out.extend(lines[i + 1:j] if new == tokens else _wrap(new, indent))
            i = j
            continue
        item = re.match(r"^(\s*)- (\S+)(\s+#.*)?$", line)
        kind = item and _kind(item[2], names)
        if kind is not None:
            j = i
            while j < len(lines) and (m := re.match(r"^(\s*)- (\S+)", lines[j])) \
                    and m[1] == item[1] and _kind(m[2], names) == kind:
                j += 1
            if j - i >= 2:
                comment = (item[3] or "").rstrip("\n")
                out.extend(f"{item[1]}- {STRATEGY_FILES[kind].format(k)}{comment if n == 0 else ''}\n"
                           for n, k in enumerate(keys))
                i = j
                continue
        out.append(line)
        i += 1
    return "".join(out)


def _kind(token: str, names: list[str]) -> int | None:
    for n, template in enumerate(STRATEGY_FILES):
        if re.fullmatch(_file_pattern(template, names), token):
            return n
    return None


def _replace_runs(tokens: list[str], keys: list[str], names: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(tokens):
        kind = _kind(tokens[i], names)
        j = i
        while kind is not None and j < len(tokens) and _kind(tokens[j], names) == kind:
            j += 1
        if kind is not None and j - i >= 2:
            out.extend(STRATEGY_FILES[kind].format(k) for k in keys)
            i = j
        else:
            out.append(tokens[i])
            i += 1
    return out


def _wrap(tokens: list[str], indent: str, width: int = 96) -> list[str]:
    lines, current = [], ""
    for token in tokens:
        if current and len(indent) + len(current) + 1 + len(token) > width:
            lines.append(f"{indent}{current}\n")
            current = token
        else:
            current = f"{current} {token}" if current else token
    return lines + [f"{indent}{current}\n"]


def generate(path: Path) -> str:
    """The file at `path` as the generator writes it."""
    from transferlab.strategies import NAMES

    text = rewrite(path.read_text(), expected(path))
    return rewrite_strategy_lists(text, default_strategies(), list(NAMES))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=DVC_FILES, help=f"default: {' '.join(DVC_FILES)}")
    ap.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for rel in args.files:
        path = ROOT / rel
        text = path.read_text()
        new = generate(path)
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
