"""Runs the SQL bench's queries through DuckDB on the same Parquet export.

Reads {"root", "threads", "runs", "queries": [{"name", "sql"}]} as JSON on stdin and
prints one JSON object: per query its best time in milliseconds over `runs` runs (after a
warm-up) and its rows, values made JSON-comparable (dates and times as ISO text).
"""
import datetime
import decimal
import json
import os
import sys
import time

import duckdb


def plain(v):
    if isinstance(v, (datetime.date, datetime.datetime, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def main():
    req = json.load(sys.stdin)
    root = req["root"]
    con = duckdb.connect()
    con.execute(f"SET threads TO {int(req['threads'])}")
    for name in sorted(os.listdir(root)):
        base = os.path.join(root, name)
        if not os.path.isdir(base):
            continue
        depth = 2 if any(d.startswith("metric=") for d in os.listdir(base)) else 1
        pattern = os.path.join(base, *(["*"] * depth), "*.parquet")
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true)"
        )
    out = {"duckdb": duckdb.__version__, "queries": {}}
    for q in req["queries"]:
        rows = con.execute(q["sql"]).fetchall()
        best = None
        for _ in range(int(req["runs"])):
            began = time.perf_counter()
            rows = con.execute(q["sql"]).fetchall()
            took = (time.perf_counter() - began) * 1e3
            best = took if best is None else min(best, took)
        out["queries"][q["name"]] = {
            "ms": best,
            "rows": [[plain(v) for v in r] for r in rows],
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
