"""Copy the generated result tables into README.md (tests/test_readme.py checks they agree).

    python scripts/sync_readme.py      (or: make readme)
"""

import json
import re
from pathlib import Path

from transferlab.evaluation import results_markdown

ROOT = Path(__file__).resolve().parents[1]


def blocks() -> dict[str, str]:
    return {"results": results_markdown(json.loads((ROOT / "metrics/evaluate.json").read_text())),
            "study": (ROOT / "study/report.md").read_text(),
            "ranking": (ROOT / "ranking/report.md").read_text()}


def sync(readme: str) -> str:
    for name, text in blocks().items():
        pattern = rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)"
        readme = re.sub(pattern, lambda m: m[1] + text + m[2], readme, flags=re.S)
    return readme


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(sync(path.read_text()))
