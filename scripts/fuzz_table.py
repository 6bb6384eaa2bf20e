"""The table of `make fuzz` (docs/benchmarks.md, "Bad inputs tried") from the campaigns' JSON
lines (LOSSBENCH_FUZZ_REPORT): one row per campaign, as Markdown."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
print("| campaign | inputs | accepted | refused | panics | slowest input ms | peak heap MiB | seconds |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['campaign']} | {r['cases']:,} | {r['accepted']:,} | {r['refused']:,} | {r['panics']} | "
          f"{r['slowest_ms']:.1f} | {r['peak_heap_mib']:.2f} | {r['seconds']:.1f} |")
print(f"\n{sum(r['cases'] for r in rows):,} inputs in all, {sum(r['panics'] for r in rows)} panics.")
