"""The README's results are the committed metrics, not numbers typed by hand."""

import json

from tests.conftest import ROOT
from transferlab.evaluation import results_markdown


def test_readme_table_is_the_committed_metrics():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- results:start -->\n")[1].split("<!-- results:end -->")[0]
    assert table == results_markdown(json.loads((ROOT / "metrics/evaluate.json").read_text()))


def test_readme_study_section_is_the_committed_study_report():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- study:start -->\n")[1].split("<!-- study:end -->")[0]
    assert block == (ROOT / "study/report.md").read_text()


def test_readme_ranking_section_is_the_committed_ranking_report():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- ranking:start -->\n")[1].split("<!-- ranking:end -->")[0]
    assert block == (ROOT / "ranking/report.md").read_text()
