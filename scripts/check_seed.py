"""Quick check of seed-corpus files while they are written: schema, duplicates, pole distribution.

Usage: PYTHONPATH=src python3 scripts/check_seed.py data/seed/FILE.jsonl [...]
"""

import sys
from collections import Counter

from personafuse.data.validate import pole_distribution, validate_corpus

records, problems = [], []
for path in sys.argv[1:]:
    report = validate_corpus(path)
    records += report.records
    problems += report.problems
for p in problems:
    print("PROBLEM", p)
print(f"{len(records)} valid records, {len(problems)} problems")
print("domains:", dict(Counter(r.domain for r in records)))
print("activated-pole share:", {k: round(v, 3) for k, v in pole_distribution(records).items()})
openings = Counter(" ".join(r.messages[-1].content.split()[:3]).lower() for r in records)
print("repeated user openings (first 3 words):", [o for o, n in openings.items() if n > 1])
