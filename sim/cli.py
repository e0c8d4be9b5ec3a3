"""``silo-sim``: run, sweep and replay deterministic simulations (DESIGN §7).

- ``silo-sim list``: scenarios and mutations;
- ``silo-sim run SCENARIO --seed N [--trace] [--mutation M]``: one run; prints the seed and every
  drawn parameter first, the verdict, and ``digest <hex>`` last; exit status 0 pass,
  1 invariant violated, 2 liveness bound missed, 3 crash;
- ``silo-sim sweep --seeds N [--base-seed B] [--scenario S] [--jobs J] [--mutation M]
  [--require-probes FILE]``: many seeds (round-robin over the scenarios unless one is given), a
  progress bar, a summary table, the fault points, forced paths (BUGGIFY) and probes that fired
  and how often, the replay command of every failure; exit status 1 on any failure, or when a
  probe listed in FILE (one name a line, ``#`` comments) never fired;
- ``silo-sim determinism --seed N [--scenario S] [--mutation M]``: the same run twice in fresh
  processes (under different hash seeds), comparing digests.

The process re-executes itself with ``PYTHONHASHSEED=0`` when that is not already set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

KEEP_HASH_SEED_ENV = "SILO_SIM_KEEP_HASHSEED"


def _ensure_hash_seed() -> None:
    """Re-exec under PYTHONHASHSEED=0 so that no hash order can differ between runs."""
    if os.environ.get("PYTHONHASHSEED") == "0" or os.environ.get(KEEP_HASH_SEED_ENV):
        return
    env = dict(os.environ, PYTHONHASHSEED="0")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "sim.cli", *sys.argv[1:]], env)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silo-sim", description="Deterministic simulation of silo (DESIGN §7)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list scenarios and mutations")
    r = sub.add_parser("run", help="run one seed of one scenario")
    r.add_argument("scenario")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--trace", action="store_true", help="print the full trace")
    r.add_argument("--mutation", help="plant a known bug (see `list`)")
    s = sub.add_parser("sweep", help="run many seeds")
    s.add_argument("--seeds", type=int, required=True)
    s.add_argument("--base-seed", type=int, default=0)
    s.add_argument("--scenario")
    s.add_argument("--jobs", type=int, default=1, help="worker processes")
    s.add_argument("--mutation")
    s.add_argument("--require-probes", metavar="FILE",
                   help="fail unless every probe or forced path listed in FILE fired")
    d = sub.add_parser("determinism", help="run one seed twice in fresh processes")
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--scenario")
    d.add_argument("--mutation")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _ensure_hash_seed()
    args = _parser().parse_args(argv)
    if args.command == "list":
        return cmd_list()
    if args.command == "run":
        return cmd_run(args.scenario, args.seed, args.mutation, args.trace)
    if args.command == "sweep":
        required: list[str] = []
        if args.require_probes:
            try:
                required = read_probe_list(args.require_probes)
            except (OSError, ValueError) as exc:
                print(f"--require-probes: {exc}", file=sys.stderr)
                return 64
        return cmd_sweep(args.seeds, args.base_seed, args.scenario, args.jobs, args.mutation,
                         required)
    return cmd_determinism(args.seed, args.scenario, args.mutation)


def _check_names(scenario: str | None, mutation: str | None) -> str | None:
    from scenarios import SCENARIOS
    from sim.runner import MUTATIONS

    if scenario is not None and scenario not in SCENARIOS:
        return f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}"
    if mutation is not None and mutation not in MUTATIONS:
        return f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}"
    return None


def cmd_list() -> int:
    from scenarios import DESCRIPTIONS, SCENARIOS
    from sim.runner import MUTATIONS

    print("scenarios:")
    for name in SCENARIOS:
        print(f"  {name:<16} {DESCRIPTIONS[name]}")
    print("mutations:")
    for name, what in MUTATIONS.items():
        print(f"  {name:<24} {what}")
    return 0


def cmd_run(scenario: str, seed: int, mutation: str | None, trace: bool) -> int:
    from sim.runner import report_lines, run_one

    err = _check_names(scenario, mutation)
    if err:
        print(err, file=sys.stderr)
        return 64

    def echo(line: str) -> None:
        print(line, flush=False)

    res = run_one(scenario, seed, mutation, echo=echo, trace_echo=echo if trace else None)
    for line in report_lines(res):
        print(line)
    sys.stdout.flush()
    return res.exit_code


# -- sweep ----------------------------------------------------------------------------------


def _sweep_one(scenario: str, seed: int, mutation: str | None) -> dict[str, Any]:
    """One run of a sweep. A sweep reports by its table and replay commands: the log lines of
    the code under test (a worker dropping a report after a crash, a shard refusing a write)
    are part of what a run exercises, not output, so they are held back for the run
    (``silo-sim run`` still prints them)."""
    import logging

    from sim.runner import run_one

    product = logging.getLogger("silo")
    quiet = logging.NullHandler()
    propagate = product.propagate
    product.addHandler(quiet)
    product.propagate = False
    try:
        return dataclasses.asdict(run_one(scenario, seed, mutation))
    finally:
        product.removeHandler(quiet)
        product.propagate = propagate


def _sweep_results(
    tasks: list[tuple[str, int]], jobs: int, mutation: str | None
) -> Iterator[dict[str, Any]]:
    if jobs <= 1:
        for scenario, seed in tasks:
            yield _sweep_one(scenario, seed, mutation)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    os.environ["PYTHONHASHSEED"] = "0"  # children are fresh interpreters: they read it
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["sim.runner", "scenarios", "sim.simulator"])
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_sweep_one, sc, seed, mutation) for sc, seed in tasks]
        for fut in cf.as_completed(futures):
            yield fut.result()


def read_probe_list(path: str) -> list[str]:
    """The probe and BUGGIFY point names in ``path`` (one a line; ``#`` starts a comment).
    Raises ValueError for a name that is not registered in silo.runtime.points."""
    from silo.runtime.points import BUGGIFY_POINTS, PROBES

    names: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if name not in PROBES and name not in BUGGIFY_POINTS:
                raise ValueError(f"{path}: {name!r} is neither a probe nor a BUGGIFY point")
            names.append(name)
    return names


def cmd_sweep(
    seeds: int, base_seed: int, scenario: str | None, jobs: int, mutation: str | None,
    required: list[str] | None = None,
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from scenarios import SCENARIOS
    from silo.runtime.points import BUGGIFY_POINTS, PROBES
    from sim.faults import FAULT_POINTS
    from sim.runner import scenario_for_seed

    err = _check_names(scenario, mutation)
    if err:
        print(err, file=sys.stderr)
        return 64
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"sweep: seeds {base_seed}..{base_seed + seeds - 1} "
                  f"scenario {scenario or 'round-robin'} mutation {mutation or 'none'} "
                  f"jobs {jobs}")
    tasks = [(scenario or scenario_for_seed(s), s) for s in range(base_seed, base_seed + seeds)]
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("failures {task.fields[failures]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("sweep", total=len(tasks), failures=0)
        failures = 0
        for res in _sweep_results(tasks, jobs, mutation):
            results.append(res)
            if res["exit_code"]:
                failures += 1
                progress.console.print(
                    f"[red]FAIL[/red] {res['scenario']} seed {res['seed']} exit "
                    f"{res['exit_code']}: {res['message'].splitlines()[0][:160]}"
                )
            progress.update(bar, advance=1, failures=failures)
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: r["seed"])

    table = Table(title="sweep summary")
    for col in ("scenario", "seeds", "failures", "sim s", "wall s", "faults fired"):
        table.add_column(col, justify="left" if col in ("scenario", "faults fired") else "right")
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_scenario.setdefault(r["scenario"], []).append(r)
    fault_totals: dict[str, int] = {}
    for name in [n for n in SCENARIOS if n in by_scenario]:
        rs = by_scenario[name]
        fired: dict[str, int] = {}
        for r in rs:
            for k, v in r["fired"].items():
                fired[k] = fired.get(k, 0) + v
                fault_totals[k] = fault_totals.get(k, 0) + v
        table.add_row(
            name, str(len(rs)), str(sum(1 for r in rs if r["exit_code"])),
            f"{sum(r['sim_seconds'] for r in rs):.0f}", f"{sum(r['wall_seconds'] for r in rs):.1f}",
            " ".join(f"{k}={v}" for k, v in sorted(fired.items())) or "-",
        )
    total_sim = sum(r["sim_seconds"] for r in results)
    table.add_row(
        "[bold]total", str(len(results)), str(sum(1 for r in results if r["exit_code"])),
        f"{total_sim:.0f}", f"{sum(r['wall_seconds'] for r in results):.1f}", "",
    )
    console.print(table)
    ft = Table(title="fault points fired")
    ft.add_column("fault point")
    ft.add_column("total", justify="right")
    for point in FAULT_POINTS:
        ft.add_row(point, str(fault_totals.get(point, 0)))
    console.print(ft)
    reached: dict[str, int] = {}
    for title, key, names in (("forced paths (BUGGIFY) taken", "buggified", BUGGIFY_POINTS),
                              ("probes reached", "probes", PROBES)):
        totals: dict[str, int] = {}
        runs: dict[str, int] = {}
        for r in results:
            for k, v in r[key].items():
                totals[k] = totals.get(k, 0) + v
                runs[k] = runs.get(k, 0) + 1
        reached.update(totals)
        t = Table(title=title)
        t.add_column("name")
        t.add_column("total", justify="right")
        t.add_column("runs", justify="right")
        for name in names:
            t.add_row(name, str(totals.get(name, 0)), str(runs.get(name, 0)))
        console.print(t)
    console.print(
        f"{len(results)} seeds in {elapsed:.1f}s wall: {len(results) / elapsed * 60:.0f} "
        f"seeds/min, {total_sim / elapsed:.0f} simulated s per wall s"
    )
    failed = [r for r in results if r["exit_code"]]
    missing = [name for name in (required or []) if not reached.get(name)]
    if missing:
        console.print(f"[red]required probes never fired[/red]: {', '.join(missing)}",
                      markup=True)
    if failed:
        console.print(f"[red]{len(failed)} failure(s)[/red]:")
        for r in failed:
            console.print(f"  exit {r['exit_code']} {r['scenario']} seed {r['seed']}: "
                          f"{r['message'].splitlines()[0][:200]}", markup=False)
            cmd = f"silo-sim run {r['scenario']} --seed {r['seed']}"
            if r["mutation"]:
                cmd += f" --mutation {r['mutation']}"
            console.print(f"    replay: {cmd}", markup=False)
        return 1
    if missing:
        return 1
    console.print("[green]all seeds passed[/green]")
    return 0


# -- determinism ----------------------------------------------------------------------------


def _digest_of(scenario: str, seed: int, mutation: str | None, hash_seed: str) -> tuple[str, int]:
    cmd = [sys.executable, "-m", "sim.cli", "run", scenario, "--seed", str(seed)]
    if mutation:
        cmd += ["--mutation", mutation]
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, **{KEEP_HASH_SEED_ENV: "1"})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = proc.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("digest "):
        raise RuntimeError(f"no digest from {' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}")
    return lines[-1].split()[1], proc.returncode


def cmd_determinism(seed: int, scenario: str | None, mutation: str | None) -> int:
    from sim.runner import scenario_for_seed

    err = _check_names(scenario, mutation)
    if err:
        print(err, file=sys.stderr)
        return 64
    scenario = scenario or scenario_for_seed(seed)
    print(f"determinism: {scenario} seed {seed} mutation {mutation or 'none'}")
    first, rc1 = _digest_of(scenario, seed, mutation, "0")
    print(f"run 1 (PYTHONHASHSEED=0):    exit {rc1} digest {first}")
    second, rc2 = _digest_of(scenario, seed, mutation, "4242")
    print(f"run 2 (PYTHONHASHSEED=4242): exit {rc2} digest {second}")
    if first == second and rc1 == rc2:
        print("deterministic: digests match")
        return 0
    print(f"NOT deterministic: replay with silo-sim run {scenario} --seed {seed} --trace "
          "in two processes and diff the traces")
    return 1


if __name__ == "__main__":
    sys.exit(main())
