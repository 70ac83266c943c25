"""Cost of value masking per value: ``scan`` (all detectors, and the ``pii-and-secrets`` profile's
detectors), ``mask_text`` (scan + mask + report) and ``mask_value`` per strategy.

Prints microseconds per value (best of several rounds) for typical short column values (names, integers
as text, e-mail addresses, UUIDs, dates) and for 1 KB text blobs, and what that means for a result of
200k rows x 3 masked columns. Times are CPU time of this process (``time.process_time``, best of
``--rounds``), so that other processes on a busy machine distort them less; a calibration line (a bare
Python function call, ``str.lower`` of 1 KB) lets figures from different machines be compared.

    .venv/bin/python bench/masking_speed.py [--rounds 7]

It also times ``ResultMasker.mask_row`` on DataRows shaped like ``pg_overhead.py``'s ``bench_people``
(10 columns, ``email`` partial and ``note`` redact) with the Python and the compiled walker.
``--datarow-only python|compiled`` runs just that loop twice, calling ``os.getppid()`` around the
second, for callgrind (instructions per row, repeatable on a loaded machine)::

    valgrind --tool=callgrind --dump-before=getppid --callgrind-out-file=/tmp/cg \
        .venv/bin/python bench/masking_speed.py --datarow-only compiled --datarow-rows 20000
    # the 4th dump (/tmp/cg.3 by number) is the second loop; divide its total by --datarow-rows

``--detector-cases`` prints only the detector-scan table of typical free-text values
(:data:`DETECTOR_CASES`: clean short text, product names, addresses, a note with an e-mail address or a
phone number, 500 characters of prose, base64/hex blobs, UUIDs) for all detectors and the default
policy's. ``--scan-only LABEL --selection all|profile`` runs ``scan`` of one of them
``--scan-calls`` times, twice, around ``os.getppid()`` as above, for callgrind::

    valgrind --tool=callgrind --dump-before=getppid --callgrind-out-file=/tmp/cgs \
        .venv/bin/python bench/masking_speed.py --scan-only "note + phone" --selection all
    # instructions per call: total of /tmp/cgs.2 (the second loop) divided by --scan-calls (default 2000)
"""

from __future__ import annotations

import argparse
import os
import time
import timeit

from wardgate.core.masking import MaskReport, MaskStrategy, mask_text, mask_value, scan
from wardgate.protocols.postgres import rowmask

PROFILE = ["email", "credit_card", "us_ssn", "iban", "aws_access_key_id", "aws_secret_access_key", "github_token",
           "gitlab_token", "jwt", "pem_private_key", "bearer_token"]

PROSE = ("The quarterly report was shipped to the warehouse in Springfield on Tuesday. Order 48213 "
         "contained 12 items, version 2.31.0 of the firmware, and was delivered to dock 7 at 10.0.0.12 "
         "by 14:30. Customer feedback was positive; the follow-up call is planned for 2024-03-05. ")
LOG = ('{"ts":"2024-01-15T10:30:00.123Z","level":"info","req":"550e8400-e29b-41d4-a716-446655440000",'
       '"path":"/api/v2/orders/48213","status":200,"ms":12.7,"commit":"3f786850e387550fdab836ed7e6dc881de23001b",'
       '"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36","bytes":5123} ')


def kilobyte(text: str) -> str:
    return (text * (1024 // len(text) + 1))[:1024]


SECRETS = (" Contact jane.doe@example.com, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE, "
           "Authorization: Bearer ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8. ")

CASES: list[tuple[str, str]] = [
    ("name", "John Smith"),
    ("int as text", "1234567"),
    ("bigint as text", "9223372036854775807"),
    ("decimal", "1234.56"),
    ("ISO date", "2024-01-15"),
    ("timestamp", "2024-01-15 10:30:00+00"),
    ("email", "jane.doe@example.com"),
    ("UUID", "550e8400-e29b-41d4-a716-446655440000"),
    ("short text", "Order shipped to warehouse 7"),
    ("card", "4111 1111 1111 1111"),
    ("1 KB prose", kilobyte(PROSE)),
    ("1 KB JSON log", kilobyte(LOG)),
    ("1 KB + 4 secrets", kilobyte(PROSE)[: 1024 - len(SECRETS)] + SECRETS),
]


LONG_CLEAN = ("The quarterly report was shipped to the warehouse on Tuesday and the customer confirmed "
              "receipt; everything arrived in good condition, the packaging was intact, and the invoice "
              "matched the purchase order. Next steps: schedule the follow-up meeting, update the account "
              "notes, and send the satisfaction survey. The regional manager asked for a summary of the "
              "delivery times for the last quarter, broken down by carrier and by region, before the "
              "end of the month, together with the returns and the open complaints.")

# Free-text values as detector-scanned columns hold them (session 11).
DETECTOR_CASES: list[tuple[str, str]] = [
    ("clean short", "Please ship by Friday"),
    ("product name", "Stainless Steel Water Bottle 750ml"),
    ("address", "221B Baker Street, London NW1 6XE, United Kingdom"),
    ("note + email", "Please forward the invoice to jane.doe@example.com before Friday"),
    ("note + phone", "Customer 4242 prefers deliveries before noon; call 415-555-2671"),
    ("500 chars clean", LONG_CLEAN),
    ("base64 blob", "3q2+7wEAAAB/Zm9vYmFyX3NlY3JldF8xMjM0NTY="),
    ("hex digest", "3f786850e387550fdab836ed7e6dc881de23001b"),
    ("UUID", "550e8400-e29b-41d4-a716-446655440000"),
]


def per_call_us(fn, rounds: int, budget: float = 0.2) -> float:
    timer = timeit.Timer(fn, timer=time.process_time)
    number, elapsed = timer.autorange()
    number = max(1, int(number * budget / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=rounds, number=number)) / number * 1e6


def bench_people_row(i: int) -> bytes:
    """A DataRow payload as PostgreSQL sends a row of pg_overhead.py's ``bench_people`` (text format)."""
    values = [str(i), f"Person {i}", f"person{i}@example.com", f"+1-555-{i % 10000:04d}", "Springfield",
              f"Customer {i} prefers deliveries before noon; call ahead", f"{(i * 7919) % 1000000 / 100:.2f}",
              "2024-01-01 00:00:00+00", "t" if i % 2 == 0 else "f", f"C-{(i * 2654435761) % 4294967296:x}"]
    out = [len(values).to_bytes(2, "big")]
    for value in values:
        data = value.encode()
        out.append(len(data).to_bytes(4, "big") + data)
    return b"".join(out)


def _column(index: int, strategy: MaskStrategy) -> tuple:
    return (index, "column", strategy, f"public.bench_people.c{index}", None, True)


def _detect(index: int) -> tuple:
    return (index, "detect", MaskStrategy.redact(), f"public.bench_people.c{index}", tuple(PROFILE), True)


DATAROW_PLANS = {
    "email partial + note redact": (_column(2, MaskStrategy.partial(4)), _column(5, MaskStrategy.redact())),
    "email hash + note redact": (_column(2, MaskStrategy.hash()), _column(5, MaskStrategy.redact())),
    # The default policy's detectors on two free-text columns (an e-mail address is found in one).
    "email + note detectors": (_detect(2), _detect(5)),
}


def datarow_loop(rows: list[bytes], fast: bool, plan: tuple, key: bytes) -> None:
    masker = rowmask.ResultMasker(plan, key, MaskReport(), fast=fast)
    mask_row = masker.mask_row
    for row in rows:
        mask_row(row)
    masker.finish()


def detector_table(rounds: int) -> None:
    """scan (all detectors, the default policy's), mask_text (redact, profile), us per value."""
    profile = tuple(PROFILE)  # as the DataRow plan passes it
    header = f"{'value':18s} {'len':>5s} {'found':>5s} {'scan all':>10s} {'scan profile':>13s} {'mask_text':>10s}"
    print(header + "   (us per value; mask_text: profile, redact)")
    print("-" * len(header))
    for label, value in DETECTOR_CASES:
        report = MaskReport()
        redact = MaskStrategy.redact()
        n_found = f"{len(scan(value))}/{len(scan(value, profile))}"
        t_all = per_call_us(lambda: scan(value), rounds)
        t_profile = per_call_us(lambda: scan(value, profile), rounds)
        t_mask = per_call_us(lambda: mask_text(value, redact, detectors=profile, report=report, column="c"), rounds)
        print(f"{label:18s} {len(value):5d} {n_found:>5s} {t_all:10.2f} {t_profile:13.2f} {t_mask:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--datarow-only", choices=("python", "compiled"),
                        help="only the DataRow loop (email partial + note redact), twice; for callgrind")
    parser.add_argument("--datarow-rows", type=int, default=20_000)
    parser.add_argument("--detector-cases", action="store_true", help="only the detector-scan table")
    parser.add_argument("--scan-only", choices=[label for label, _ in DETECTOR_CASES],
                        help="only scan() of one detector case, twice; for callgrind")
    parser.add_argument("--selection", choices=("all", "profile"), default="all")
    parser.add_argument("--scan-calls", type=int, default=2000)
    args = parser.parse_args()
    rounds = args.rounds
    key = os.urandom(32)
    if args.scan_only:
        value = dict(DETECTOR_CASES)[args.scan_only]
        detectors = None if args.selection == "all" else tuple(PROFILE)
        calls = range(args.scan_calls)
        for _ in calls:  # warm-up
            scan(value, detectors)
        os.getppid()  # callgrind: --dump-before=getppid marks the timed loop
        for _ in calls:
            scan(value, detectors)
        os.getppid()
        return
    if args.detector_cases:
        detector_table(rounds)
        return
    if args.datarow_only:
        rows = [bench_people_row(i) for i in range(1, args.datarow_rows + 1)]
        plan = DATAROW_PLANS["email partial + note redact"]
        datarow_loop(rows, args.datarow_only == "compiled", plan, key)  # warm-up
        os.getppid()  # callgrind: --dump-before=getppid marks the timed loop
        datarow_loop(rows, args.datarow_only == "compiled", plan, key)
        os.getppid()
        return

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    blob = kilobyte(PROSE)
    print(f"calibration: python call {per_call_us(lambda: None, rounds) * 1000:.0f} ns, "
          f"str.lower(1 KB) {per_call_us(blob.lower, rounds):.2f} us; load average {load:.2f}, "
          f"{os.cpu_count()} CPUs")
    print()
    header = f"{'value':18s} {'len':>5s} {'found':>5s} {'scan all':>10s} {'scan profile':>13s} {'mask_text':>10s}"
    print(header + "   (us per value)")
    print("-" * len(header))
    per_value: dict[str, float] = {}
    for label, value in CASES:
        report = MaskReport()
        redact = MaskStrategy.redact()
        n_found = len(scan(value))
        t_all = per_call_us(lambda: scan(value), rounds)
        t_profile = per_call_us(lambda: scan(value, PROFILE), rounds)
        t_mask = per_call_us(lambda: mask_text(value, redact, report=report, column="c"), rounds)
        per_value[label] = t_all
        print(f"{label:18s} {len(value):5d} {n_found:5d} {t_all:10.2f} {t_profile:13.2f} {t_mask:10.2f}")
    print()
    detector_table(rounds)

    print()
    print("mask_value (whole-column strategies), us per value:")
    for name, strategy in [("redact", MaskStrategy.redact()), ("partial(4)", MaskStrategy.partial(4)),
                           ("hash", MaskStrategy.hash()), ("null", MaskStrategy.null())]:
        short = per_call_us(lambda: mask_value("jane.doe@example.com", strategy, key=key), rounds)
        card = per_call_us(lambda: mask_value("4111 1111 1111 1111", strategy, key=key), rounds)
        print(f"  {name:11s} email {short:6.2f}   card {card:6.2f}")

    print()
    rows_data = [bench_people_row(i) for i in range(1, 10_001)]
    compiled = rowmask.fast_available()
    print("ResultMasker.mask_row, bench_people rows (10 columns), us per row"
          + ("" if compiled else " (compiled walker not built)") + ":")
    for label, plan in DATAROW_PLANS.items():
        python_us = per_call_us(lambda: datarow_loop(rows_data, False, plan, key), rounds) / len(rows_data)
        line = f"  {label:28s} python {python_us:6.2f}"
        if compiled:
            compiled_us = per_call_us(lambda: datarow_loop(rows_data, True, plan, key), rounds) / len(rows_data)
            line += f"   compiled {compiled_us:6.2f}   ({python_us / compiled_us:.0f}x)"
        print(line)

    print()
    rows = 200_000
    typical = (per_value["name"] + per_value["email"] + per_value["int as text"]) / 3
    print(f"200k rows x 3 short columns (name, email, int): ~{typical * 3 * rows / 1e6:.2f} s of scan "
          f"({typical:.2f} us per value)")
    print(f"200k rows x 1 KB text column: ~{per_value['1 KB prose'] * rows / 1e6:.1f} s of scan")


if __name__ == "__main__":
    main()
