"""The reproduction of MM-DINOv2's two claims on the synthetic cohort: a grid of arms x seeds x label fractions.

  python -m mmdino_jax.experiments.reproduce [--size quick|default|gpu] [--out DIR] [--workers N]
      [--report docs/reproduction.md] [--seeds N] [--fractions 0.1,1] [--arms a,b] [--limit N]

Makes the size's cohort and prepared cache once (DIR/cache; DIR defaults to runs/reproduce/SIZE) and, for the
radiomics arm, its features (DIR/radiomics.npz); then runs every cell not done yet (mmdino_jax/experiments/cell.py,
one subprocess per cell, `--workers` at a time; 0 = in this process, one after another), so rerunning the same
command resumes and a finished grid does no work. `--limit` stops after that many cells (the rest: next run).
When every cell is done it writes DIR/results.json (every cell), DIR/results.csv (one row per cell) and the
report with its plots (`--report`, default DIR/reproduction.md; plots in its folder/figures). The grid's sizes and
arms are configs/reproduce.py's (`--config`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from mmdino_jax.config_base import config_module
from mmdino_jax.data.setup import ensure_cache
from mmdino_jax.experiments import cell as cell_lib
from mmdino_jax.experiments import radiomics
from mmdino_jax.experiments import report as report_lib
from mmdino_jax.experiments.summary import table_rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m mmdino_jax.experiments.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=cell_lib.GRID, help="the grid's config file (default %(default)s)")
    p.add_argument("--size", default="default")
    p.add_argument("--out", default="", help="results folder (default runs/reproduce/SIZE)")
    p.add_argument("--workers", type=int, default=2, help="cells at once, one subprocess each; 0 = in-process")
    p.add_argument("--report", default="", help="report path (default OUT/reproduction.md)")
    p.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 (default: the size's)")
    p.add_argument("--fractions", default="", help="comma list of label fractions (default: the size's)")
    p.add_argument("--arms", default="", help="comma list of arms (default: all of the config's)")
    p.add_argument("--limit", type=int, default=0, help="run at most this many cells now (0 = all)")
    p.add_argument("--finished", action="store_true",
                   help="run nothing: results and report from the grid's finished cells (a grid cut short)")
    p.add_argument("--note", default="", help="a line for the report's 'What was run' (how the machine was shared)")
    return p.parse_args(argv)


def cell_command(a, arm: str, seed: int, fraction: float, out: Path) -> list[str]:
    return [sys.executable, "-m", "mmdino_jax.experiments.cell", "--config", a.config, "--size", a.size,
            "--arm", arm, "--seed", str(seed), "--fraction", repr(fraction), "--out", str(out)]


def run_cells(a, todo: list[tuple], out: Path, total: int) -> list[str]:
    """Run the `todo` cells; returns the names of those that failed (their logs: OUT/logs/NAME.log)."""
    bar = tqdm(total=total, initial=total - len(todo), desc=f"reproduce ({a.size})", unit="cell")
    failed = []
    if a.workers <= 0:
        for arm, seed, fraction in todo:
            cell_lib.run_cell(a.config, a.size, arm, seed, fraction, out)
            bar.update()
        bar.close()
        return failed
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(out / "xla"))}

    def one(arm, seed, fraction):
        name = cell_lib.cell_name(arm, seed, fraction)
        with open(logs / f"{name}.log", "w") as log:
            rc = subprocess.run(cell_command(a, arm, seed, fraction, out), stdout=log, stderr=subprocess.STDOUT,
                                env=env).returncode
        return name, rc

    with ThreadPoolExecutor(a.workers) as pool:
        for future in as_completed([pool.submit(one, *c) for c in todo]):
            name, rc = future.result()
            if rc:
                failed.append(name)
                tqdm.write(f"cell {name} failed (exit {rc}): see {logs / name}.log")
            bar.update()
    bar.close()
    return failed


def grid_wall_seconds(out: Path) -> float:
    """Wall clock of the grid: from its cohort's generation to its newest finished cell (every invocation)."""
    newest = max(p.stat().st_mtime for p in (out / "cells").glob("*.json"))
    return newest - (out / "cohort" / "cohort.json").stat().st_mtime


def run_info(a, out: Path, report: Path, cells: list[dict], history: list[dict], missing: list[str]) -> dict:
    """The report's header (what was run, where, how long) and footer (commands)."""
    import jax

    wall = grid_wall_seconds(out)
    cpu = sum(c["seconds"] for c in cells)
    c = config_module(a.config).SIZES[a.size]
    header = [
        "# Reproduction of the MM-DINOv2 claims on the synthetic cohort", "",
        "Generated by `python -m mmdino_jax.experiments.reproduce` from its results table "
        f"(`{report_lib.figures_dir(report).name}/results.json`, one row per cell in `results.csv` beside it); "
        "do not edit by hand.", "",
        "**Claims (Scholz et al., MICCAI 2025).** (a) A linear probe on MM-DINOv2 features beats the best "
        "supervised model on an external test set by 11.1 MCC points (0.60 against ~0.49). (b) Full-modality "
        "masking makes the model robust to missing sequences.", "",
        "## What was run", "",
        f"- Size `{a.size}` of `configs/reproduce.py`: arms {', '.join(sorted({x['arm'] for x in cells}))}; "
        f"seeds {sorted({x['seed'] for x in cells})}; label fractions {sorted({x['fraction'] for x in cells})}; "
        f"{len(cells)} cells.",
        f"- Cohort (`mmdino_jax/data/phantom.py`, generated once, seed 0, every train subject labeled): train "
        f"{c['subjects'][0]} / val {c['subjects'][1]} (internal site) / test {c['subjects'][2]} (site-shifted "
        f"external site), {c['resolution']} mm phantom resolution, 10 % of sequences missing at random.",
        f"- Model: ViT, patch 14, D = {c['embed_dim']}, depth {c['depth']}, {c['heads']} heads, sequence "
        f"embeddings; {c['global_size']} px global crops, {c['local_crops']} local crops of {c['local_size']} px, "
        f"batch {c['batch']}, {c['steps']} optimizer steps per trained arm; probe on {c['eval_size']} px "
        "evaluation views.",
        "- A label fraction keeps that stratified share of the train labels (seeded) for the semi-supervised term, "
        "the supervised arm's training set and every arm's probe. A seed varies the model's initialisation, the "
        "batches and crops, the kept labels and the probe's C hold-out; the cohort is fixed.",
        "- Every arm: the same logistic-regression probe (C chosen by MCC on a 10 % hold-out of the kept labeled "
        "train subjects: internal data only, nothing selected on test), scored on val and on the external test; "
        "each trained arm's final step is used (no checkpoint selection).",
        f"- Hardware: {cpu_name()}, {len(os.sched_getaffinity(0))} usable cores, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; wall time of the grid {wall / 60:.1f} min "
        f"(cohort, cache and radiomics features included; {len(history)} finished invocation(s)), "
        f"{cpu / 60:.1f} min summed over cells "
        f"(at most {max(h['workers'] for h in history) if history else 0} cell(s) at a time; 0 = in-process).",
        *([f"- {a.note}"] if a.note else []),
        *([f"- **Cut short**: {len(missing)} cell(s) of the size's grid did not finish and are left out "
           f"({', '.join(missing)}); the tables use the finished ones (seeds per row in `results.csv`)."]
          if missing else []), ""]
    footer = ["## Commands", "", "```bash",
              f"python -m mmdino_jax.experiments.reproduce --size {a.size} --workers {a.workers} "
              f"--out {os.path.relpath(out)} --report {os.path.relpath(report)}",
              "# on one GPU (prepared, not run on this machine):",
              "python -m mmdino_jax.experiments.reproduce --size gpu --workers 1 --out runs/reproduce/gpu "
              "--report runs/reproduce/gpu/reproduction.md", "```"]
    return {"header": header, "footer": footer}


def write_results(folder: Path, cells: list[dict]) -> None:
    """`folder`/results.json (every cell) and results.csv (one flat row per cell)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(cells))
    rows = table_rows(cells)
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def main(argv=None) -> int:
    """Run (or resume) the grid; returns the number of cells run now."""
    a = parse_args(argv)
    start = time.time()
    module = config_module(a.config)
    size = module.grid(a.size)
    arms = a.arms.split(",") if a.arms else list(module.ARMS)
    fractions = [float(f) for f in a.fractions.split(",")] if a.fractions else list(size["fractions"])
    seeds = list(range(a.seeds or size["seeds"]))
    out = Path(a.out or f"runs/reproduce/{a.size}").absolute()
    out.mkdir(parents=True, exist_ok=True)
    config = cell_lib.cell_config(a.config, a.size, "mmdino", 0, 1.0, out / "cache")
    cache = ensure_cache(config.data, str(out), 0)
    if "radiomics" in arms:
        radiomics.compute_features(cache, config.data.sequences.split(","), out / "radiomics.npz", a.workers)
    grid = [(arm, s, f) for s in seeds for f in fractions for arm in arms]  # seed by seed: a cut grid stays whole
    done = lambda c: (out / "cells" / f"{cell_lib.cell_name(*c)}.json").is_file()  # noqa: E731
    todo = [] if a.finished else [c for c in grid if not done(c)]
    todo = todo[:a.limit] if a.limit else todo
    failed = run_cells(a, todo, out, len(grid)) if todo else []
    history_path = out / "history.jsonl"
    if todo:
        with open(history_path, "a") as f:
            f.write(json.dumps({"cells": len(todo), "failed": len(failed), "seconds": round(time.time() - start, 1),
                                "workers": a.workers}) + "\n")
    if failed:
        raise SystemExit(f"{len(failed)} cell(s) failed ({', '.join(failed)}): see {out}/logs; rerun to retry them")
    missing = [cell_lib.cell_name(*c) for c in grid if not done(c)]
    if missing and not a.finished:
        print(f"{len(grid) - len(missing)} of {len(grid)} cells done; rerun the same command to run the rest "
              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        return len(todo)
    cells = [json.loads((out / "cells" / f"{cell_lib.cell_name(*c)}.json").read_text()) for c in grid if done(c)]
    # a cut grid reports the label fractions that every arm reached
    reached = lambda f: all(any(c["arm"] == arm and c["fraction"] == f for c in cells) for arm in arms)  # noqa: E731
    fractions = [f for f in fractions if reached(f)]
    if not fractions:
        raise SystemExit(f"{out}: no label fraction has a finished cell of every arm yet")
    cells = [c for c in cells if c["fraction"] in fractions]
    report = Path(a.report or out / "reproduction.md")
    write_results(out, cells)
    write_results(report_lib.figures_dir(report), cells)
    history = [json.loads(line) for line in history_path.read_text().splitlines()] if history_path.is_file() else []
    info = run_info(a, out, report, cells, history, missing)
    report_lib.write_report(report, cells, arms, fractions, size["bootstrap"], info)
    print(f"{len(cells)} cells: {out}/results.csv; report {report}")
    return len(todo)


if __name__ == "__main__":
    main()
