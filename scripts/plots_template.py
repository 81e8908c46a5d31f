"""Write the offline HTML template of `dvc plots show` / `dvc plots diff` (`make plots-template`).

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without a network it stays
blank. This template carries the three libraries inline, taken from the vl-convert-python wheel
(vega 6.2, vega-lite 5.21, vega-embed 7.0: 0.9 MB, 0.3 MB gzipped), and leaves out DVC's
`{scripts}` placeholder, where DVC would put its CDN <script> tags. `.dvc/config` points
`plots.html_template` at the output, which is committed: every install route (`pip install -e .`
included) has it, and a plain `dvc plots show` uses it. tests/test_install.py checks that the
committed page is what this script writes with the vl-convert-python pinned in pyproject.toml.

    python scripts/plots_template.py [OUT]      # default: .dvc/offline-plots.html
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / ".dvc/offline-plots.html"
VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite v5 specs
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")  # what DVC substitutes

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- offline: Vega %(vega)s, Vega-Lite %(vega_lite)s, Vega-Embed %(embed)s, from vl-convert-python
         %(vlc)s by scripts/plots_template.py; no CDN -->
    <script>
(function () {
"use strict";
%(bundle)s
})();
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_html() -> str:
    """The page: DVC's layout with the libraries inline (a classic script in <head>, so
    `vegaEmbed` exists before DVC's inline per-plot scripts run)."""
    from importlib.metadata import version

    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)  # sets window.vegaEmbed etc.
    clashes = [p for p in PLACEHOLDERS if p in bundle]
    if clashes or "</script" in bundle.lower():
        raise SystemExit(f"the vl-convert bundle contains {clashes or '</script'}: DVC would "
                         "substitute into it; pin another vl-convert-python version")
    return PAGE % {"vega": vl_convert.get_vega_version(), "vega_lite": VEGA_LITE,
                   "embed": vl_convert.get_vega_embed_version(),
                   "vlc": version("vl-convert-python"), "bundle": bundle}


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    html = template_html()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    print(f"{out}: {len(html) / 1e6:.1f} MB, offline plot template")


if __name__ == "__main__":
    main(sys.argv[1:])
