"""The params reference: every key of params.yaml, its committed value, what the schema allows
and what params.yaml's comment says, as one markdown table (docs/params.md's generated block).

    python scripts/params_reference.py       print it
    make readme                               writes it into docs/params.md (scripts/sync_readme.py)

Allowed values come from the schema itself (transferlab/params.py's pydantic models, through
their JSON schema): each field's type, choices and bounds. Rules a validator checks (a value
against another key, compute.threads' ceiling, a block count against model.arch) are not in the
table; they stop check_params with one line naming both keys. Descriptions are the comments
beside each key in params.yaml, so they are written once, where users edit values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def yaml_comments(text: str) -> dict[str, str]:
    """{dotted key: its comment}, from `key: value  # comment` lines and the comment-only lines
    aligned under them (continuations)."""
    comments, stack, last, last_col = {}, [], None, None
    for line in text.splitlines():
        match = re.match(r"^(\s*)([\w-]+):\s*([^#]*?)\s*(?:#\s?(.*))?$", line)
        if match and not line.lstrip().startswith("#"):
            indent = len(match[1])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match[2]))
            last = ".".join(name for _, name in stack)
            last_col = line.find("#") if match[4] is not None else None
            if match[4]:
                comments[last] = match[4].strip()
            continue
        cont = re.match(r"^(\s*)#\s?(.*)$", line)
        if cont and last is not None and last_col is not None and len(cont[1]) == last_col:
            comments[last] = f"{comments.get(last, '')} {cont[2].strip()}".strip()
        elif not line.strip() or not cont:
            last, last_col = (None, None) if not line.strip() else (last, last_col)
    return comments


def _resolve(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    return node


def allowed(node: dict, defs: dict) -> str:
    """What the schema accepts at one key, in a few words."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        return " or ".join(allowed(n, defs) for n in node["anyOf"])
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    kind = node.get("type", "any")
    if kind == "array":
        items = allowed(node.get("items", {}), defs)
        size = ""
        if "minItems" in node or "maxItems" in node:
            size = f", {node.get('minItems', 0)}..{node.get('maxItems', '∞')} entries"
        return f"list of {items}{size}"
    low = ("≥ ", node["minimum"]) if "minimum" in node else ("> ", node.get("exclusiveMinimum"))
    high = ("≤ ", node["maximum"]) if "maximum" in node else ("< ", node.get("exclusiveMaximum"))
    bounds = [f"{sign}{value:g}" if isinstance(value, float) else f"{sign}{value:,}"
              for sign, value in (low, high) if value is not None]
    name = {"integer": "integer", "number": "number", "string": "text", "boolean": "true/false",
            "object": "section"}.get(kind, kind)
    return name + (f" ({', '.join(bounds)})" if bounds else "")


def leaves(node: dict, defs: dict, prefix: str = ""):
    """(dotted key, schema node) for every leaf of the schema below `node`."""
    node = _resolve(node, defs)
    for key, child in node.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        resolved = _resolve(child, defs)
        if resolved.get("type") == "object" and "properties" in resolved:
            yield from leaves(resolved, defs, f"{dotted}.")
        else:
            yield dotted, child


def value_at(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def table() -> str:
    from transferlab.params import Params

    schema = Params.model_json_schema()
    defs = schema.get("$defs", {})
    text = (ROOT / "params.yaml").read_text()
    values, comments = yaml.safe_load(text), yaml_comments(text)
    rows = ["| key | value in params.yaml | allowed | what it does |", "|---|---|---|---|"]
    for dotted, node in leaves(schema, defs):
        value = json.dumps(value_at(values, dotted))
        why = _resolve(node, defs).get("description")
        note = comments.get(dotted, "")
        if why:
            note = f"{note} (limit: {why})" if note else f"limit: {why}"
        note = note.replace("|", "\\|")
        rows.append(f"| `{dotted}` | `{value}` | {allowed(node, defs)} | {note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
