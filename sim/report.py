"""Console output of a replay: progress while devices stream, one table per round (rich)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RoundPrinter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    def note(self, msg: str) -> None:
        self.console.print(f"[dim]·[/dim] {msg}")

    def warn(self, msg: str) -> None:
        self.console.print(f"[bold yellow]![/bold yellow] {msg}")

    @contextlib.contextmanager
    def streaming(self, total: int) -> Iterator[Callable[[int, float], None]]:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("sim {task.fields[sim]}"), TimeElapsedColumn(), console=self.console)
        task = progress.add_task("readings published", total=total, sim="")

        def update(published: int, sim_now: float) -> None:
            sim = datetime.fromtimestamp(sim_now, UTC).strftime("%Y-%m-%d %H:%M")
            progress.update(task, completed=published, sim=sim)

        with progress:
            self.console = progress.console
            yield update

    def round_table(self, row: dict) -> None:
        title = f"round {row['round']}: {row['state']}"
        if row.get("model_version") is not None and "rmse30" in row:
            title += (f" — model v{row['model_version']}, RMSE@30 {row['rmse30']:.2f} mg/dL "
                      f"(persistence {row['persistence_rmse30']:.2f}), RMSE@60 {row['rmse60']:.2f} "
                      f"(persistence {row['persistence_rmse60']:.2f}), {row['bytes_up'] / 1e6:.2f} MB up, "
                      f"{row['seconds']:.1f} s")
        else:
            title += f" — {row.get('failure_reason')}"
        table = Table(title=title, title_justify="left")
        for col in ("participant", "windows", "eps total", "eps round", "delta", "unit", "accountant"):
            table.add_column(col)
        for p, eps in row["epsilon"].items():
            table.add_row(p, str(row["windows"][p]), f"{eps['value']:.3f}", f"{eps['round_value']:.3f}",
                          f"{eps['delta']:g}", eps["unit"], eps["accountant"])
        for r in row["refusals"]:
            table.add_row(r["participant"], "-", "refused", "", "", "", r["reason"])
        self.console.print(table)

    def readings(self, counts: dict) -> None:
        self.console.print(
            f"readings: published {counts['published']}, ingested {counts['ingested']}, duplicates dropped "
            f"{counts['duplicates']}, rejected {counts['rejected']}, lost {counts['lost']}")

    def release_checks(self, r: dict) -> None:
        if "skipped" in r:
            self.console.print(f"release checks: skipped ({r['skipped']})")
            return
        mark = {True: "[green]ok[/green]", False: "[red]FAILED[/red]"}
        p, t = r["promoted"], r["tampered"]
        lines = [f"model v{p['version']} on all {r['devices']} inference-capable devices: {mark[p['reached_all']]} "
                 f"({p['seconds']} s){'' if p['reached_all'] else ', missing ' + ', '.join(p['missing'])}",
                 f"{t['kind']} release refused by all: {mark[t['refused_by_all']]} ({t['seconds']} s)"
                 f"{'' if t['refused_by_all'] else ', accepted by ' + ', '.join(t['accepted_by'])}"]
        if "skipped" in r.get("rollback", {}):
            lines.append(f"rollback: skipped ({r['rollback']['skipped']})")
        elif "rollback" in r:
            b = r["rollback"]
            lines.append(f"rollback v{b['from']} -> v{b['to']} on all devices: {mark[b['reached_all']]} "
                         f"({b['seconds']} s){'' if b['reached_all'] else ', missing ' + ', '.join(b['missing'])}")
        self.console.print("release to devices (" + ", ".join(r["gateways"]) + "):\n  " + "\n  ".join(lines))
