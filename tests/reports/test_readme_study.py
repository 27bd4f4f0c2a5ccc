"""The README's study table is the report's, verbatim: the summary cannot drift from the results."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_study_table_is_the_reports():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- study-table:[^>]*-->\n(.*?)\n<!-- /study-table -->", readme, re.S)
    assert block, "README.md lost its study-table markers"
    report = (REPO / "docs" / "REPORT.md").read_text()
    main = report[report.index("## Group `main`"):]
    methods = main[main.index("### Methods (selected configurations)"):]
    table = methods[methods.index("| Family"):].split("\n\n")[0]
    assert block.group(1) == table
