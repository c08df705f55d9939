"""Metric tables: markdown for metrics.md, rich for the console."""

from __future__ import annotations

from typing import Any

COLUMNS = (("auc", "AUC"), ("ap", "AP"), ("f1_max", "F1-max*"), ("acc", "ACC"), ("f1", "F1"),
           ("sensitivity", "Sens"), ("specificity", "Spec"), ("chi2", "χ²"))


def _cell(key: str, value: float) -> str:
    return f"{value:.3f}" if key == "chi2" else f"{100 * value:.1f}"


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """One row per score; percentages except χ². Footnotes say which thresholds were used."""
    scores = metrics["scores"]
    lines = ["| score | " + " | ".join(h for _, h in COLUMNS) + " | threshold |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, m in scores.items():
        lines.append(f"| {name} | " + " | ".join(_cell(k, m[k]) for k, _ in COLUMNS) + f" | {m['threshold']:.4g} |")
    source = metrics.get("threshold_source") or "the normal training images' scores"
    lines += ["", f"Split `{metrics['split']}`: {metrics['n_normal']} normal, {metrics['n_abnormal']} abnormal. "
              f"ACC/F1/Sens/Spec at the threshold {source} (no test labels used). "
              "*F1-max is an oracle: its threshold is chosen on the test labels."]
    return "\n".join(lines) + "\n"


def print_metrics_table(metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cxrad evaluate — {metrics['split']} ({metrics['n_normal']} normal / "
                        f"{metrics['n_abnormal']} abnormal)")
    table.add_column("score")
    for _, h in COLUMNS:
        table.add_column(h, justify="right")
    for name, m in metrics["scores"].items():
        table.add_row(name, *(_cell(k, m[k]) for k, _ in COLUMNS))
    Console().print(table)
