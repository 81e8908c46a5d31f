"""Screenshot of the HTML report for the README (headless Chromium; `make screenshot`).

    python scripts/report_screenshot.py [REPORT] [PNG]   # default: report.html docs/report.png

The top of the page (results, curves, confusion matrices) at 2/3 scale in 64 colours: ~80 kB.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    report = Path(argv[0]) if argv else ROOT / "report.html"
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "docs/report.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None or not report.is_file():
        raise SystemExit(f"needs chromium (apt-get install chromium) and {report} (dvc repro)")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp}/profile", "--host-resolver-rules=MAP * ~NOTFOUND",
                        "--hide-scrollbars", "--window-size=1150,2050",
                        "--virtual-time-budget=5000", f"--screenshot={full}",
                        report.resolve().as_uri()], check=True, capture_output=True)
        image = Image.open(full).convert("RGB")
    image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main(sys.argv[1:])
