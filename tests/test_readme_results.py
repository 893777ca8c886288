"""The README's main results table is the committed report's, cell for cell (a rerun that updates
docs/benchmark_synthetic/ without the README, or the reverse, fails here)."""

from conftest import REPO

REPORT = REPO / "docs" / "benchmark_synthetic" / "summary.md"
SECTION = "### The result:"


def markdown_tables(text):
    """Every pipe table of ``text`` as a list of {header: cell} rows."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(rows) > 2:
            tables.append([dict(zip(rows[0], r)) for r in rows[2:]])
        rows = []
    return tables


def results_by_run(table):
    return {(r["config"], r["variant"]): {k: v.replace("**", "") for k, v in r.items()} for r in table}


def test_readme_main_table_is_the_committed_report():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(SECTION):]
    section = section[:section.index("\n## ")]
    ours = next(t for t in markdown_tables(section) if t and "gain avg inc acc (pts ± s.e.)" in t[0])
    report = next(t for t in markdown_tables(REPORT.read_text()) if t and "gain avg inc acc (pts ± s.e.)" in t[0])
    ours, report = results_by_run(ours), results_by_run(report)
    assert set(ours) == set(report), "the README's rows are not the report's"
    for run, row in ours.items():
        shared = [k for k in row if k in report[run]]
        assert len(shared) >= 10
        assert {k: row[k] for k in shared} == {k: report[run][k] for k in shared}, run
    seeds = {r["seeds"] for r in report.values()}
    assert seeds == {"10"} and "10 seeds" in SECTION + section[:60]
