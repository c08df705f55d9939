"""Metric tables: markdown for metrics.md, rich for the console."""

from __future__ import annotations

from typing import Any

COLUMNS = (("auc", "AUC"), ("ap", "AP"), ("f1_max", "F1-max*"), ("acc", "ACC"), ("f1", "F1"),
           ("sensitivity", "Sens"), ("specificity", "Spec"), ("chi2", "χ²"))


def _cell(key: str, m: dict[str, Any]) -> str:
    """One metric in percent (χ² as is), with its confidence interval when the metrics hold one."""
    value = m[key]
    if key == "chi2":
        return f"{value:.3f}"
    ci = m.get(f"{key}_ci")
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _headers(metrics: dict[str, Any]) -> list[str]:
    level = (metrics.get("intervals") or {}).get("level")
    return [f"{h} [{100 * level:g} % CI]" if level and k in ("auc", "ap") else h for k, h in COLUMNS]


def intervals_note(intervals: dict[str, Any] | None) -> str:
    """One sentence saying how the intervals in brackets were computed ('' when there are none)."""
    if not intervals:
        return ""
    return (f"Brackets: {100 * intervals['level']:g} % confidence intervals; AUC: {intervals['auc']}; "
            f"AP: {intervals['ap']}. ")


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """One row per score; percentages except χ². Footnotes say which thresholds and intervals were used."""
    scores = metrics["scores"]
    lines = ["| score | " + " | ".join(_headers(metrics)) + " | threshold |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, m in scores.items():
        lines.append(f"| {name} | " + " | ".join(_cell(k, m) for k, _ in COLUMNS) + f" | {m['threshold']:.4g} |")
    source = metrics.get("threshold_source") or "the normal training images' scores"
    lines += ["", f"Split `{metrics['split']}`: {metrics['n_normal']} normal, {metrics['n_abnormal']} abnormal. "
              f"ACC/F1/Sens/Spec at the threshold {source} (no test labels used). "
              + intervals_note(metrics.get("intervals"))
              + "*F1-max is an oracle: its threshold is chosen on the test labels."]
    return "\n".join(lines) + "\n"


def print_metrics_table(metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cxrad evaluate — {metrics['split']} ({metrics['n_normal']} normal / "
                        f"{metrics['n_abnormal']} abnormal)")
    table.add_column("score")
    for h in _headers(metrics):
        table.add_column(h, justify="right")
    for name, m in metrics["scores"].items():
        table.add_row(name, *(_cell(k, m) for k, _ in COLUMNS))
    Console().print(table)
