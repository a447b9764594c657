"""docs/reproduction.md and its two plots, regenerated from the grid's results (experiments/summary.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmdino_jax.experiments import summary  # noqa: E402

PAPER_DIFFERENCE = 0.11  # MM-DINOv2 minus the best supervised model, external test MCC (0.60 against ~0.49)
NAMES = {"mmdino": "MM-DINOv2", "no_modality_masking": "no modality masking", "supervised": "supervised",
         "random_init": "random init (frozen)", "radiomics": "radiomics (IBSI, mirp)"}


def _ci(t) -> str:
    return f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]"


def _msd(t) -> str:
    return f"{t[0]:.3f} ± {t[1]:.3f}"


def figures_dir(report_path) -> Path:
    """Where a report's plots (and a copy of its results table) go: docs/reproduction.md -> docs/reproduction/."""
    return Path(report_path).with_suffix("")


def claim_fraction(fractions) -> float:
    """The grid's label fraction closest to the paper's comparison point, 25 %."""
    return min(fractions, key=lambda f: abs(f - 0.25))


def verdict(low: float, high: float, better: str, worse: str) -> str:
    if low > 0:
        return better
    if high < 0:
        return worse
    return "cannot resolve (the CI spans 0)"


def plot_label_efficiency(path: Path, cells, arms, fractions) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for k, arm in enumerate(arms):
        stats = [summary.arm_summary(cells, arm, f, 0)["test"]["mcc"] for f in fractions]
        x = np.asarray(fractions) * (1 + 0.03 * (k - len(arms) / 2))  # a small offset keeps error bars apart
        ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=NAMES[arm])
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("labeled share of the train subjects")
    ax.set_ylabel("external test MCC (mean ± sd, seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_robustness(path: Path, cells, arms, fraction) -> None:
    cases = ["all", *summary.missing_cases(cells[0])]
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=100)
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        g = summary.group(cells, arm, fraction)
        values = np.array([[summary.case_mcc(c, case) for case in cases] for c in g])
        ax.bar(np.arange(len(cases)) + (k - (len(arms) - 1) / 2) * width, values.mean(0), width,
               yerr=values.std(0, ddof=1) if len(g) > 1 else None, capsize=2, label=NAMES[arm])
    ax.set_xticks(np.arange(len(cases)), ["all four" if c == "all" else c.replace("no_", "without ") for c in cases])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"external test MCC ({fraction:.0%} labels)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def results_section(cells, arms, fractions, n_boot: int, rel: str) -> list[str]:
    lines = ["## Results per arm and label fraction", "",
             "External (site-shifted) test split; mean ± sd over seeds; *pooled* = the seed-mean MCC with its "
             f"95 % bootstrap CI over test subjects ({n_boot} resamples). Val = internal validation.", "",
             "| arm | labels | labeled subjects | test MCC | pooled test MCC [95 % CI] | test AUC (macro) "
             "| test F1 (mean) | val MCC |", "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        for f in fractions:
            s = summary.arm_summary(cells, arm, f, n_boot)
            p = s["test_mcc_pooled"]
            lines.append(f"| {NAMES[arm]} | {f:.0%} | {s['n_labeled']:.0f} | {_msd(s['test']['mcc'])} | "
                         f"{p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}] | {_msd(s['test']['auc_macro'])} | "
                         f"{_msd(s['test']['f1_mean'])} | {_msd(s['val']['mcc'])} |")
    return [*lines, "", f"![label efficiency]({rel}/label_efficiency.png)", ""]


def claim_a_section(cells, frac: float, n_boot: int) -> tuple[list[str], tuple]:
    a = summary.paired_difference(cells, "mmdino", "supervised", frac, n_boot)
    d = a["pooled"]
    where = "inside" if d[1] <= PAPER_DIFFERENCE <= d[2] else "above" if d[2] < PAPER_DIFFERENCE else "below"
    lines = [f"## Claim (a): MM-DINOv2 minus supervised, {frac:.0%} labels", "",
             "Paired on the same test subjects: test MCC difference [95 % paired bootstrap CI].", "",
             "| seed | MM-DINOv2 − supervised |", "|---|---|",
             *(f"| {s} | {_ci(t)} |" for s, t in a["per_seed"].items()),
             f"| pooled (mean over seeds) | {_ci(d)} |", "",
             f"Paper: +{PAPER_DIFFERENCE:.2f}. Here: {_ci(d)}; the paper's value lies {where} this CI. Verdict: "
             + verdict(d[1], d[2], "supports claim (a): MM-DINOv2 features beat the supervised model here",
                       "refutes claim (a) on this cohort: the supervised model scores higher") + ".", ""]
    return lines, d


def claim_b_section(cells, arms, frac: float, n_boot: int, rel: str) -> tuple[list[str], dict | None]:
    cases = summary.missing_cases(cells[0])
    lines = [f"## Claim (b): robustness to a missing sequence, {frac:.0%} labels", "",
             "Drop = test MCC with every sequence minus with one sequence removed from every test subject "
             "(backbones: its tokens masked, as at inference; radiomics: its features imputed by the train "
             "means), on the test subjects left with a sequence; mean over seeds [pooled 95 % CI].", "",
             "| arm | " + " | ".join(c.replace("no_", "without ") for c in cases) + " |", "|---|" + "---|" * len(cases)]
    for arm in arms:
        drops = summary.sequence_drops(cells, arm, frac, n_boot)
        lines.append(f"| {NAMES[arm]} | " + " | ".join(_ci(v["drop"]) for v in drops.values()) + " |")
    b = None
    if {"mmdino", "no_modality_masking"} <= set(arms):
        b = summary.drop_difference(cells, "mmdino", "no_modality_masking", frac, n_boot)
        lines += ["", "MM-DINOv2's drop minus the no-masking arm's drop (negative: full-modality masking loses "
                  "less):", "", "| removed | difference of drops [95 % CI] | verdict |", "|---|---|---|"]
        lines += [f"| {case.replace('no_', '')} | {_ci(t)} | "
                  + verdict(t[1], t[2], "refutes (b): masking loses more", "supports (b): masking loses less") + " |"
                  for case, t in b.items()]
    return [*lines, "", f"![robustness]({rel}/robustness.png)", ""], b


def conclusions(cells, arms, fractions, claim_a, claim_b, n_boot: int) -> list[str]:
    """What the numbers support, refute and leave open (generated from them)."""
    above = {arm: [f for f in fractions if summary.arm_summary(cells, arm, f, n_boot)["test_mcc_pooled"][1] > 0]
             for arm in arms}
    chance = [NAMES[a] for a in arms if not above[a]]
    lines = ["## What this supports, refutes and cannot resolve", ""]
    lines += [f"- {NAMES[a]}: pooled test MCC CI above 0 at " + (", ".join(f"{f:.0%}" for f in above[a]) or "no")
              + " label fraction(s)." for a in arms]
    if chance:
        lines.append(f"- At chance at every fraction: {', '.join(chance)}; their comparisons say nothing beyond that.")
    if claim_a:
        lines.append(f"- Claim (a) (MM-DINOv2 minus supervised {_ci(claim_a)} against the paper's "
                     f"+{PAPER_DIFFERENCE:.2f}): " + verdict(claim_a[1], claim_a[2], "supported", "refuted") + ".")
    if claim_b:
        verdicts = [verdict(t[1], t[2], "refuted", "supported") for t in claim_b.values()]
        counts = {v: verdicts.count(v) for v in ("supported", "refuted")}
        lines.append(f"- Claim (b), per removed sequence: {counts['supported']} supported, {counts['refuted']} "
                     f"refuted, {len(verdicts) - sum(counts.values())} unresolved (CI spans 0) of {len(verdicts)}.")
    return lines


def write_report(path, cells, arms, fractions, n_boot: int, run_info: dict) -> Path:
    """Write the report at `path` and its plots in `figures_dir(path)`; returns the report's path."""
    path = Path(path)
    figures = figures_dir(path)
    figures.mkdir(parents=True, exist_ok=True)
    frac = claim_fraction(fractions)
    plot_label_efficiency(figures / "label_efficiency.png", cells, arms, fractions)
    plot_robustness(figures / "robustness.png", cells, arms, frac)
    lines = [*run_info["header"], "", *results_section(cells, arms, fractions, n_boot, figures.name)]
    claim_a = None
    if {"mmdino", "supervised"} <= set(arms):
        section, claim_a = claim_a_section(cells, frac, n_boot)
        lines += section
    section, claim_b = claim_b_section(cells, arms, frac, n_boot, figures.name)
    lines += [*section, *conclusions(cells, arms, fractions, claim_a, claim_b, n_boot), "", *run_info["footer"]]
    path.write_text("\n".join(lines) + "\n")
    return path
