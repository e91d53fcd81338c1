"""Every paper claim the benchmarks test, judged under the one rule.

Which numbers each claim compares, in which direction and against which
floor, is in `benchmarks/claim_records.py` (one function per paper
family); the verdict rule is `benchmarks/stats.py`'s. This module writes
the verdicts into the results files and the tables.

`python -m benchmarks.claims` (repository root):

1. re-verdicts every results file it knows: its markdown gets a first
   section "Verdicts under the one rule" (the numbers are the recorded
   run's, the verdicts recomputed; the recorded run's own verdict words
   below it are superseded), and the JSON gets `"verdicts_one_rule"`;
2. writes `benchmarks/results/CLAIMS.md`: one row per paper claim (the
   comparisons of a claim combined by `stats.combine`), with the paper's
   own figure (`PAPER_NUMBERS`) and a link to its results file.

`--claims-only` writes CLAIMS.md and leaves the results files alone;
`--readme` prints the README's claim table (links relative to the
repository root) and writes nothing.

A claim over results recorded with fewer than 5 seeds, or without
per-seed values, reads "not testable" until it is rerun.
"""

import argparse
import json
import os
import re

from benchmarks import stats
from benchmarks.claim_records import FAMILIES  # noqa: F401 (re-exported)
from benchmarks.claim_records import records_for
from benchmarks.claim_records import softsrv_records  # noqa: F401
from benchmarks.paper_numbers import NOT_STATED  # noqa: F401 (re-exported)
from benchmarks.paper_numbers import PAPER_NUMBERS  # noqa: F401 (re-exported)

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
BEGIN = "<!-- one-rule verdicts: begin -->"
END = "<!-- one-rule verdicts: end -->"
# A verdict word of the recorded run's own rule, not yet marked.
OLD_WORD = re.compile(
    r"\b((?:not |partly )?reproduced)\b(?! \(old rule)", re.IGNORECASE
)


def combine(records):
    """Records grouped by (paper, claim, result), one verdict each."""
    groups = {}
    for r in records:
        groups.setdefault((r["paper"], r["claim"], r["result"]), []).append(r)
    out = []
    for (paper, claim, result), rs in groups.items():
        word = stats.combine(rs)
        counts = {w: sum(r["verdict"] == w for r in rs) for w in stats.WORDS}
        out.append(
            {
                "paper": paper,
                "claim": claim,
                "paper_number": rs[0]["paper_number"],
                "ours": rs[0]["ours"]
                if len(rs) == 1
                else ", ".join(f"{n} {w}" for w, n in counts.items() if n),
                "verdict": word,
                "result": result,
            }
        )
    return out


def _section(records):
    rows = [
        {
            "claim": r["claim"],
            "comparison": r["detail"],
            "ours": r["ours"],
            "verdict": r["verdict"],
            "why": r["reason"],
        }
        for r in records
    ]
    from benchmarks.harness import markdown_table

    return (
        f"{BEGIN}\n## Verdicts under the one rule\n\n"
        "The numbers are the recorded run's; the verdicts are recomputed "
        "from its per-seed values by `python -m benchmarks.claims`. Any "
        "verdict words further down are the recorded run's own rule and "
        f"are superseded by this table.\n\n{stats.RULE}\n\n"
        + markdown_table(rows)
        + f"{END}\n"
    )


def _drop_verdict_sections(text):
    """Removes every `## ...` section whose heading names a verdict (the
    recorded run's own rule); returns the text and {heading: section}."""
    kept, dropped, current = [], {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            heading = line[3:].strip()
            current = heading if "verdict" in heading.lower() else None
            if current:
                dropped[current] = ""
        if current:
            dropped[current] += line
        else:
            kept.append(line)
    return "".join(kept), dropped


def reverdict(name, results_dir=None):
    """Writes the one-rule verdicts into `<name>.md` and `<name>.json`
    (in `results_dir`, by default where `harness.result_path` puts them)."""
    if results_dir is None:
        from benchmarks.harness import result_path

        results_dir = os.path.dirname(result_path(name, ".json"))
    path = os.path.join(results_dir, name + ".json")
    with open(path) as f:
        payload = json.load(f)
    records = records_for(name, payload)
    if not records:
        return []
    payload["verdicts_one_rule"] = records
    md_path = os.path.join(results_dir, name + ".md")
    with open(md_path) as f:
        text = f.read()
    if BEGIN in text:
        text = (
            text[: text.index(BEGIN)] + text[text.index(END) + len(END) + 1 :]
        )
    text, old = _drop_verdict_sections(text)
    text = OLD_WORD.sub(r"\1 (old rule, superseded)", text)
    superseded = payload.setdefault("superseded_verdicts", {})
    superseded.update(old)
    for title in [t for t in payload["tables"] if "verdict" in t.lower()]:
        superseded[title] = payload["tables"].pop(title)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    head, _, body = text.partition("\n")
    with open(md_path, "w") as f:
        f.write(head + "\n\n" + _section(records) + "\n" + body.lstrip("\n"))
    return records


def _rows(records, link):
    return [
        {
            "paper": r["paper"],
            "claim": r["claim"],
            "paper's number": r["paper_number"],
            "ours": r["ours"],
            "verdict": r["verdict"],
            "results": f"[{r['result']}]({link}{r['result']}.md)",
        }
        for r in combine(records)
    ]


def claims_table(records):
    """The text of `CLAIMS.md` (links relative to the results folder)."""
    from benchmarks.harness import markdown_table

    return (
        "# Paper claims and our verdicts\n\n"
        "Generated by `python -m benchmarks.claims` from the recorded "
        f"results under one statistics rule.\n\n{stats.RULE}\n\n"
        "Results of `benchmarks/curation.py` and the Shampoo speed and "
        "quality parts carry their own verdicts through the same rule "
        "(see their results files).\n\n" + markdown_table(_rows(records, ""))
    )


def readme_table(records):
    """One markdown table for the README: paper, claim, the paper's
    number, ours, verdict, and a repository-relative link to each results
    file (`benchmarks/results/<name>.md`)."""
    from benchmarks.harness import markdown_table

    return markdown_table(_rows(records, "benchmarks/results/"))


def collect(results_dir=RESULTS_DIR, *, rewrite=True):
    """Every comparison record of the results JSONs in `results_dir`;
    `rewrite=True` also writes each file's one-rule section (`reverdict`),
    `False` leaves the results files untouched."""
    records = []
    for file in sorted(os.listdir(results_dir)):
        if not file.endswith(".json"):
            continue
        name = file[: -len(".json")]
        if rewrite:
            records += reverdict(name, results_dir)
        else:
            with open(os.path.join(results_dir, file)) as f:
                records += records_for(name, json.load(f))
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=RESULTS_DIR)
    parser.add_argument(
        "--readme",
        action="store_true",
        help="print the README's claim table (repository-relative links) "
        "and write nothing",
    )
    parser.add_argument(
        "--claims-only",
        action="store_true",
        help="write CLAIMS.md only, leaving every results file as it is",
    )
    args = parser.parse_args(argv)
    rewrite = not (args.readme or args.claims_only)
    records = collect(args.results, rewrite=rewrite)
    if args.readme:
        print(readme_table(records), end="")
        return 0
    with open(os.path.join(args.results, "CLAIMS.md"), "w") as f:
        f.write(claims_table(records))
    print(f"{len(records)} comparisons, {len(combine(records))} claims")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
