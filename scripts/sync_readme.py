"""Copy the generated blocks into README.md and docs/*.md (tests/test_readme.py checks they agree).

    python scripts/sync_readme.py      (or: make readme)

A block is the text between `<!-- name:start -->` and `<!-- name:end -->`; each name has one
generator below, and every page that carries the markers gets the same text.
"""

import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.dvc_deps import default_strategies
from scripts.params_reference import table as params_table
from transferlab.evaluation import results_markdown

ROOT = Path(__file__).resolve().parents[1]


def blocks() -> dict[str, str]:
    return {"results": results_markdown(json.loads((ROOT / "metrics/evaluate.json").read_text())),
            "study": (ROOT / "study/report.md").read_text(),
            "ranking": (ROOT / "ranking/report.md").read_text(),
            "selection": (ROOT / "selection/report.md").read_text(),
            "params": params_table(),
            "pipeline": pipeline_picture()}


def pipeline_picture() -> str:
    """The default pipeline's stages as one picture (its strategies from dvc.yaml)."""
    head = "download ─► prepare ─► pretrain ─► extract ─► "
    transfer = f"transfer@{{{','.join(default_strategies())}}} ─► "
    return (f"```\n{head}{transfer}evaluate ─► report\n"
            f"{' ' * (len(head) + len(transfer) - 2)}└► export\n```\n")


def pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def sync(text: str) -> str:
    for name, block in blocks().items():
        pattern = rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)"
        text = re.sub(pattern, lambda m: m[1] + block + m[2], text, flags=re.S)
    return text


if __name__ == "__main__":
    for path in pages():
        path.write_text(sync(path.read_text()))
