"""The tables of an `evaluate` results.json, as results.md and model cards show them (plain
functions over the results dict: training writes it, export quotes it)."""

from __future__ import annotations


def slug(name: str) -> str:
    """`name` as a file-name part (confusion_<slug>.png, features/<slug>/)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def results_markdown(results: dict) -> str:
    """The tables a person reads: mean ± std per feature set, then every fold."""
    lines = [
        f"# Linear-probe evaluation: {results['corpus']}",
        "",
        f"- manifest: `{results['manifest']}`; encoder: `{results['encoder']}`",
        f"- folds: {results['fold_field']} = {', '.join(results['folds'])} (each held out once)",
        f"- classes: {', '.join(results['labels'])}",
        f"- probe: {results['probe']}",
        *[f"- **warning**: {w}" for w in results.get("warnings", [])],
        "",
        "| features | WA | UA | WF1 |",
        "|---|---|---|---|",
    ]
    for name, r in results["feature_sets"].items():
        cells = [f"{100 * r['mean'][m]:.2f} ± {100 * r['std'][m]:.2f}" for m in ("wa", "ua", "wf1")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "Per fold (WA / UA / WF1, %):",
        "",
        "| fold | n | " + " | ".join(results["feature_sets"]) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(results["feature_sets"]))
    for fold in results["folds"]:
        sets = list(results["feature_sets"].values())
        n = sets[0]["folds"][fold]["n_test"]
        cells = [
            " / ".join(f"{100 * r['folds'][fold][m]:.1f}" for m in ("wa", "ua", "wf1"))
            for r in sets
        ]
        lines.append(f"| {fold} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *[f"![{name}](confusion_{slug(name)}.png)" for name in results["feature_sets"]],
        "",
    ]
    return "\n".join(lines)
