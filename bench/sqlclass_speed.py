"""Microseconds per ``classify()`` call on its three paths, for a few statement shapes.

* exact hit — the same text again (a dict keyed by the text);
* normalize hit — the same statement shape with new constants: ``pglast.parser.normalize`` (C) plus a
  dict look-up keyed by the normalized text;
* full miss — a new shape: normalize, ``parse_sql`` of the normalized text, the AST walk, fingerprint.

Also prints the raw pglast costs for reference. Run: ``.venv/bin/python bench/sqlclass_speed.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pglast
from pglast import parser as pg_parser

from wardgate.core import sqlclass
from wardgate.core.sqlclass import classify

# {n}: a constant that changes between calls; {i}: an identifier suffix that changes the shape.
SHAPES = {
    "point select": "SELECT id, name, email FROM users{i} WHERE id = {n}",
    "orm update": ("UPDATE public.orders{i} SET status = 'shipped', updated_at = now() "
                   "WHERE id = {n} AND tenant_id = 42 RETURNING id"),
    "cte+join+agg": ("WITH recent AS (SELECT * FROM orders{i} WHERE created_at > now() - interval '{n} days') "
                     "SELECT u.id, u.name, count(*) AS n FROM users u JOIN recent r ON r.user_id = u.id "
                     "WHERE u.active AND u.region IN ('eu', 'us', 'ap') GROUP BY u.id, u.name "
                     "HAVING count(*) > {n} ORDER BY 3 DESC LIMIT 10"),
}


def _per_call_us(fn, items) -> float:
    start = time.perf_counter_ns()
    for item in items:
        fn(item)
    return (time.perf_counter_ns() - start) / len(items) / 1000


def bench(name: str, template: str, hits: int, misses: int, repeat: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"exact hit": [], "normalize hit": [], "full miss": []}
    for r in range(repeat):
        sqlclass.clear_caches()
        text = template.format(n=1, i="")
        classify(text)
        results["exact hit"].append(_per_call_us(classify, [text] * hits))

        fresh = [template.format(n=100 + k + r * hits, i="") for k in range(hits)]
        results["normalize hit"].append(_per_call_us(classify, fresh))

        shapes = [template.format(n=7, i=f"_{r}_{k}") for k in range(misses)]
        results["full miss"].append(_per_call_us(classify, shapes))
    return {k: statistics.median(v) for k, v in results.items()}


def raw_costs(template: str, count: int) -> dict[str, float]:
    text = template.format(n=1, i="")
    norm = pg_parser.normalize(text)
    return {
        "pglast normalize": _per_call_us(pg_parser.normalize, [text] * count),
        "pglast fingerprint": _per_call_us(pg_parser.fingerprint, [text] * count),
        "pglast parse_sql": _per_call_us(pglast.parse_sql, [norm] * (count // 10)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=20000)
    ap.add_argument("--misses", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'shape':14} {'exact hit':>10} {'norm hit':>10} {'full miss':>10}   "
          f"{'normalize':>10} {'fingerprint':>11} {'parse_sql':>10}   (µs per call)")
    for name, template in SHAPES.items():
        r = bench(name, template, args.hits, args.misses, args.repeat)
        raw = raw_costs(template, args.hits)
        print(f"{name:14} {r['exact hit']:10.2f} {r['normalize hit']:10.2f} {r['full miss']:10.1f}   "
              f"{raw['pglast normalize']:10.2f} {raw['pglast fingerprint']:11.2f} {raw['pglast parse_sql']:10.1f}")
    sqlclass.clear_caches()


if __name__ == "__main__":
    main()
