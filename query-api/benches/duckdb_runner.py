"""DuckDB side of the analytics bench (query-api/benches/analytics.rs).

Reads {"root", "queries": [{"name", "sql"}], "runs", "threads"} as JSON on stdin, opens
each exported dataset as a view over its Parquet files (Hive partitions), runs every
query `runs` times and prints {"version", "results": {name: {"ms": [...], "rows": [...]}}}
as one JSON line. Dates and times come back as ISO strings, decimals as floats, so the
Rust side compares them with DataFusion's answers.
"""
import datetime
import decimal
import json
import os
import sys
import time

import duckdb


def cell(v):
    if isinstance(v, (datetime.datetime,)):
        return v.isoformat()
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def main():
    spec = json.load(sys.stdin)
    root = spec["root"]
    con = duckdb.connect()
    con.execute(f"SET threads = {int(spec.get('threads', os.cpu_count() or 1))}")
    con.execute("SET TimeZone = 'UTC'")
    for name in sorted(os.listdir(root)):
        if os.path.isdir(os.path.join(root, name)):
            glob = os.path.join(root, name, "**", "*.parquet").replace("'", "''")
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
            )
    out = {}
    for q in spec["queries"]:
        times = []
        rows = None
        for _ in range(int(spec.get("runs", 3))):
            t0 = time.perf_counter()
            rows = con.execute(q["sql"]).fetchall()
            times.append((time.perf_counter() - t0) * 1000.0)
        out[q["name"]] = {"ms": times, "rows": [[cell(v) for v in r] for r in rows]}
    print(json.dumps({"version": duckdb.__version__, "results": out}))


if __name__ == "__main__":
    main()
