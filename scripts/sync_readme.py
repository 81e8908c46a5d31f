"""Copy the generated result tables into README.md (tests/test_readme.py checks they agree).

    python scripts/sync_readme.py      (or: make readme)
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = {"results": ROOT / "reports/results.md", "study": ROOT / "study/report.md"}


def sync(readme: str) -> str:
    for name, source in BLOCKS.items():
        pattern = rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)"
        readme = re.sub(pattern, lambda m: m[1] + source.read_text() + m[2], readme, flags=re.S)
    return readme


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(sync(path.read_text()))
