"""Command-line interface: python -m saescale_analysis COMMAND FILES...

Commands: table, phases, costs, scaling, check-learning, validate, regress, report.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import pandas as pd

from . import regress
from .results import _expand, load_results, to_frame
from .scaling import format_scaling
from .schema import SCHEMA_FILE, validate_file
from .table import format_costs, format_phases, format_table

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m saescale_analysis",
        description="Summarise and check saescale results files (schema saescale.result/1).",
        epilog="Exit status: 0 success, 1 check-learning found failing runs, validate found "
        "invalid files or regress found a regression, 2 usage error, unreadable file or wrong "
        "schema.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    files_help = "results JSON files or quoted glob patterns (e.g. 'results/*.json')"

    t = sub.add_parser("table", help="print a comparison table of runs",
                       description="Print one row per run, sorted by variant name.")
    t.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    t.add_argument("--relative-to", default="jumprelu", metavar="VARIANT",
                   help="variant whose median step time is the 1.00x reference (default: %(default)s)")
    t.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")

    ph = sub.add_parser("phases", help="print the per-phase time breakdown of each run",
                        description="For each run: step median, GEMM floor and floor_ratio, then "
                        "every timed phase (median, p10-p90, share of the step), slowest first.")
    ph.add_argument("files", nargs="+", metavar="FILE", help=files_help)

    co = sub.add_parser("costs", help="print where each run's step goes and its memory",
                        description="One row per run: GEMMs, activation/selection, auxiliary "
                        "passes, optimizer and the rest as % of the median step; the GEMMs' "
                        "achieved GFLOP/s against the run's own GEMM ceiling; the measured memory "
                        "peak against the analytic breakdown.")
    co.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    co.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")

    sc = sub.add_parser("scaling", help="print a scaling table (runs of one shape on several grids)",
                        description="For each run: its dp x lp grid, median step, speedup and "
                        "efficiency against the one-rank run of the same variant and shape, time "
                        "in communication phases and bytes sent per step and rank.")
    sc.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    sc.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")

    c = sub.add_parser(
        "check-learning", help="check fidelity thresholds; exit 1 if any run fails",
        description="Check that every run learned: status ok, FVU <= --max-fvu, "
        "recovered_fraction >= --min-recovered, and L0 within [T/R, T*R] for "
        "T = --true-l0, R = --max-l0-ratio. Only the checks whose options are given are "
        "applied; a null metric fails its check. Prints one line per failing run.")
    c.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    c.add_argument("--max-fvu", type=float, metavar="X", help="fail if fvu > X")
    c.add_argument("--min-recovered", type=float, metavar="Y", help="fail if recovered_fraction < Y")
    c.add_argument("--max-l0-ratio", type=float, metavar="R",
                   help="fail if l0 is outside [T/R, T*R] (needs --true-l0; R >= 1)")
    c.add_argument("--true-l0", type=float, metavar="T", help="ground-truth L0 (needs --max-l0-ratio)")

    v = sub.add_parser(
        "validate", help="check files against the results JSON Schema; exit 1 if any is invalid",
        description=f"Validate every file against {SCHEMA_FILE.name} (JSON Schema draft 2020-12). "
        "Prints one line per error: FILE: JSON-PATH: MESSAGE. Exit status: 0 all valid, "
        "1 some file invalid, 2 a file is unreadable or not JSON (or jsonschema is missing).")
    v.add_argument("files", nargs="+", metavar="FILE", help=files_help)

    r = sub.add_parser(
        "regress", help="throughput regression gate: CURRENT runs against BASELINE runs",
        usage="python -m saescale_analysis regress [options] (BASELINE | --system S --scale X) "
        "CURRENT",
        description="Match runs by benchmark (variant, d_model, width, batch_size, precision, "
        "dp x lp grid, comm backend on several ranks, optimizer, fencing; for topk/batchtopk "
        "also k, topk_algo, aux_k, dead window and batch scope) and compare their per-step times "
        "(every timed step of every file of a benchmark, pooled; one sample per file where "
        "a file has no benchmarks entries). A benchmark is a REGRESSION only when its median "
        "throughput fell by --threshold or more AND a two-sided Mann-Whitney U test gives "
        "p < --alpha; 'improved' likewise the other way; with fewer than --min-repetitions "
        "samples on a side the verdict is 'not enough repetitions'. Benchmarks found on one "
        "side only are listed ('no baseline', 'not in current').",
        epilog="BASELINE and CURRENT are each a results file, a directory (its *.json) or a "
        "quoted glob. Exit status: 0 no regression (also when some benchmarks had too few "
        "repetitions or are missing: their rows say so; --strict fails those), 1 a regression, "
        "2 usage error or unreadable input.")
    r.add_argument("inputs", nargs="+", metavar="BASELINE CURRENT", help=argparse.SUPPRESS)
    r.add_argument("--threshold", type=float, default=0.05, metavar="F",
                   help="smallest throughput loss that counts, as a fraction (default: "
                   "%(default)s, i.e. -5%% tokens/s = +5.26%% median step time)")
    r.add_argument("--alpha", type=float, default=0.05, metavar="A",
                   help="significance level of the Mann-Whitney U test (default: %(default)s)")
    r.add_argument("--min-repetitions", type=int, default=9, metavar="N",
                   help="fewest samples per side to conclude anything (default: %(default)s)")
    r.add_argument("--per-run", action="store_true",
                   help="one sample per results file (its median step) instead of every step: "
                   "tests run-to-run variation, needs --min-repetitions files per side")
    r.add_argument("--system", metavar="S", help="compare against the baseline of system S "
                   "(analysis/baselines/S/X/*.json) instead of a BASELINE argument")
    r.add_argument("--scale", metavar="X", help="the baseline's scale (with --system)")
    r.add_argument("--baselines-root", metavar="DIR", default=str(regress.BASELINES_ROOT),
                   help="where baselines live (default: analysis/baselines)")
    r.add_argument("--strict", action="store_true",
                   help="also fail (exit 1) on 'not enough repetitions' and on baseline "
                   "benchmarks missing from CURRENT")
    r.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")
    r.set_defaults(subparser=r)  # usage errors print regress's usage

    rp = sub.add_parser(
        "report", help="write a study's report: report.html, report.md and PNG figures",
        description="Read every results file below STUDY (at any depth; other JSON files are "
        "ignored), group the runs by sweep and row (context.tags.sweep/row; untagged runs: the "
        "sweep is the first directory below STUDY when it is weak, strong, variants or width, "
        "else variants, and the row is the variant) and write DIR/report.md, DIR/report.html "
        "(self-contained: figures embedded) and one PNG per figure: the setup, the step time "
        "by phase group per variant relative to JumpReLU, memory, FVU against L0, time to "
        "fidelity, weak and strong scaling with efficiency and Karp-Flatt, step time against "
        "width, box plots of the step times, the scaling projection and a table of every run "
        "(median with a 95% confidence interval). Only runs with status ok enter the figures; "
        "the others are listed. Sections without data are left out, with one line saying so.",
        epilog="Exit status: 0 report written, 2 usage error, STUDY missing or holding no "
        "results file, or the report could not be written.")
    rp.add_argument("study", metavar="STUDY", help="the study directory")
    rp.add_argument("--out", metavar="DIR", help="output directory (default: STUDY/report)")
    rp.add_argument("--saescale", metavar="PATH",
                    help="the saescale binary, for the projection section's `saescale plan` "
                    "(default: saescale on PATH)")
    rp.add_argument("--title", metavar="T", help="the report's title (default: from study.json "
                    "or the directory name)")
    return p


def _report(args: argparse.Namespace) -> int:
    """The report subcommand: write the files, print where they are."""
    from . import report  # matplotlib loads only for this command

    try:
        written = report.write_report(args.study, args.out, args.saescale, args.title)
    except OSError as e:  # a missing or empty study, an unwritable output directory
        print(f"saescale_analysis: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    figures = sum(len(s.figures) for s in written.sections)
    print(f"report: {written.html} and {written.markdown} ({len(written.sections)} sections, "
          f"{figures} figures; {sum(len(p.runs) for p in written.study.points)} runs, "
          f"{len(written.study.left_out)} left out)")
    for line in written.omitted:
        print(f"note: {line}")
    return EXIT_OK


def _regress(args: argparse.Namespace) -> int:
    """The regress subcommand: the table, a summary line, notes; exit 1 on a regression."""
    parser = args.subparser
    if (args.system is None) != (args.scale is None):
        parser.error("--system and --scale must be given together")
    want = 1 if args.system is not None else 2
    if len(args.inputs) != want:
        parser.error("regress takes BASELINE CURRENT, or --system S --scale X CURRENT "
                     f"(got {len(args.inputs)} path(s); quote globs)")
    if not 0 <= args.threshold < 1:
        parser.error("--threshold must be in [0, 1)")
    if not 0 < args.alpha < 1:
        parser.error("--alpha must be in (0, 1)")
    if args.min_repetitions < 1:
        parser.error("--min-repetitions must be >= 1")
    try:
        if args.system is not None:
            base_spec = regress.baseline_dir(args.system, args.scale, args.baselines_root)
        else:
            base_spec = args.inputs[0]
        baseline = regress.load_side(base_spec, per_run=args.per_run)
        current = regress.load_side(args.inputs[-1], per_run=args.per_run)
    except (OSError, ValueError) as e:
        print(f"saescale_analysis: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    rows = regress.compare(baseline, current, args.threshold, args.alpha, args.min_repetitions)
    print(regress.format_regress(rows, markdown=args.markdown))
    print()
    print(regress.summary(rows, args.threshold, args.alpha, args.min_repetitions, args.per_run))
    for line in regress.system_notes(baseline, current):
        print(line)
    for side, name in ((baseline, "baseline"), (current, "current")):
        for path in side.skipped:
            print(f"note: {name} run skipped: {path}")
    return EXIT_FAIL if regress.failed(rows, strict=args.strict) else EXIT_OK


def _validate(specs: Sequence[str]) -> int:
    """The validate subcommand: every file checked, errors one per line."""
    try:
        import jsonschema  # noqa: F401  (only to report its absence clearly)
    except ImportError:
        print("saescale_analysis: error: the jsonschema package is missing (run `make deps`)",
              file=sys.stderr)
        return EXIT_ERROR
    status, invalid, total = EXIT_OK, 0, 0
    for spec in specs:
        try:
            paths = _expand(spec)
        except OSError as e:
            print(f"saescale_analysis: error: {e}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        for path in paths:
            total += 1
            try:
                errors = validate_file(path)
            except (OSError, ValueError) as e:
                print(f"saescale_analysis: error: {e}", file=sys.stderr)
                status = EXIT_ERROR
                continue
            if errors:
                invalid += 1
                for where, message in errors:
                    print(f"{path}: {where}: {message}")
    if status == EXIT_ERROR:
        return status
    if invalid:
        print(f"validate: {invalid} of {total} file(s) invalid")
        return EXIT_FAIL
    print(f"validate: all {total} file(s) valid")
    return EXIT_OK


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _failures(row: pd.Series, args: argparse.Namespace) -> list[str]:
    """Reasons why one run fails the requested checks (empty if it passes)."""
    out = []
    if row["status"] != "ok":
        out.append(f"status {row['status']!r}")
    checks = []
    if args.max_fvu is not None:
        checks.append(("fvu", lambda v: v <= args.max_fvu, f"> {args.max_fvu:g}"))
    if args.min_recovered is not None:
        checks.append(("recovered_fraction", lambda v: v >= args.min_recovered, f"< {args.min_recovered:g}"))
    if args.true_l0 is not None:
        lo, hi = args.true_l0 / args.max_l0_ratio, args.true_l0 * args.max_l0_ratio
        checks.append(("l0", lambda v: lo <= v <= hi, f"outside [{lo:.4g}, {hi:.4g}]"))
    for name, ok, why in checks:
        v = row[name]
        if _missing(v):
            out.append(f"{name} is null")
        elif not ok(v):
            out.append(f"{name} {v:.4g} {why}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check-learning":
        if (args.true_l0 is None) != (args.max_l0_ratio is None):
            parser.error("--true-l0 and --max-l0-ratio must be given together")
        if args.max_l0_ratio is not None and args.max_l0_ratio < 1:
            parser.error("--max-l0-ratio must be >= 1")
    if args.command == "validate":
        return _validate(args.files)
    if args.command == "regress":
        return _regress(args)
    if args.command == "report":
        return _report(args)
    try:
        results = load_results(args.files)
        df = to_frame(results)
    except (OSError, ValueError) as e:
        print(f"saescale_analysis: error: {e}", file=sys.stderr)
        return EXIT_ERROR

    if args.command == "phases":
        print("\n\n".join(format_phases(r) for r in results))
        return EXIT_OK

    if args.command == "costs":
        print(format_costs(results, markdown=args.markdown))
        return EXIT_OK

    if args.command == "scaling":
        print(format_scaling(results, markdown=args.markdown))
        return EXIT_OK

    if args.command == "table":
        print(format_table(df, relative_to=args.relative_to, markdown=args.markdown))
        return EXIT_OK

    failed = 0
    for _, row in df.iterrows():
        reasons = _failures(row, args)
        if reasons:
            failed += 1
            print(f"FAIL {row['path']} ({row['variant']}): {'; '.join(reasons)}")
    if failed:
        return EXIT_FAIL
    print(f"check-learning: all {len(df)} run(s) passed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
