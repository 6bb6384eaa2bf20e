"""The table of `make chaos` (docs/reliability.md) from the chaos suite's JSON lines
(CHAOS_REPORT, tests/python/test_chaos.py): one row per scenario, as Markdown."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
print("| scenario | trials | faults injected | expected | outcomes |")
print("|---|---|---|---|---|")
for r in rows:
    outcomes = ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items())
    print(f"| {r['scenario']} | {r['trials']} | {r['faults']} | {r['expected']} | {outcomes} |")
print(f"\n{len(rows)} scenarios, {sum(r['trials'] for r in rows)} trials.")
