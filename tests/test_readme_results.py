"""The results tables of the README and of docs/ are the committed reports', cell for cell: a table with a
"gain avg inc acc" column must equal the report (``docs/benchmark_synthetic/<folder>/summary.md``) that its
section cites, so a rerun that updates a report without the page quoting it, or the reverse, fails here."""

import re

from conftest import REPO

SYNTHETIC = REPO / "docs" / "benchmark_synthetic"
HEADLINE_REPORT = SYNTHETIC / "icarl_der_foster_lucir_10seeds_avx2" / "summary.md"
HEADLINE = "## Headline result"
GAIN = "gain avg inc acc (pts ± s.e.)"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


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


def result_tables(text):
    return [results_by_run(t) for t in markdown_tables(text) if t and GAIN in t[0] and "config" in t[0]]


def sections(text):
    """The text under each heading (## or ###), heading included."""
    return re.split(r"\n(?=#{1,3} )", text)


def assert_same(ours, report, where):
    assert set(ours) == set(report), f"{where}: the rows are not the report's"
    for run, row in ours.items():
        shared = [k for k in row if k in report[run]]
        assert len(shared) >= 10, (where, run)
        assert {k: row[k] for k in shared} == {k: report[run][k] for k in shared}, (where, run)


def test_readme_headline_table_is_the_committed_report():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(HEADLINE):]
    section = section[:section.index("\n## ")]
    assert "10 seeds" in section[:60] and "Synthetic images" in section
    assert "benchmark_synthetic/icarl_der_foster_lucir_10seeds_avx2/" in section
    ours = result_tables(section)
    assert len(ours) == 1, "the README's headline has one results table"
    report = result_tables(HEADLINE_REPORT.read_text())[0]
    assert_same(ours[0], report, "README headline")
    assert {r["seeds"] for r in report.values()} == {"10"}


def test_every_results_table_in_the_docs_is_the_report_its_section_cites():
    checked = 0
    for page in PAGES:
        for section in sections(page.read_text()):
            tables = result_tables(section)
            if not tables:
                continue
            cited = sorted(set(re.findall(r"benchmark_synthetic/([\w]+)/", section)))
            assert cited, f"{page.name}: a results table whose section cites no report"
            reports = {name: result_tables((SYNTHETIC / name / "summary.md").read_text())[0] for name in cited}
            for ours in tables:
                match = [name for name, report in reports.items() if set(report) == set(ours)]
                assert match, f"{page.name}: a results table whose rows are none of the cited reports' {cited}"
                assert_same(ours, reports[match[0]], f"{page.name} vs {match[0]}")
                checked += 1
    # the README's headline, docs/benchmark.md's copy of it, docs/results.md's 5-seed, LUCIR and BiC/MEMO tables
    assert checked >= 5
