"""Console output of a replay: progress while devices stream, one table per round (rich)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sim.outcomes import held_back_reason


class RoundPrinter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    def note(self, msg: str) -> None:
        self.console.print(f"[dim]·[/dim] {msg}")

    def warn(self, msg: str) -> None:
        self.console.print(f"[bold yellow]![/bold yellow] {msg}")

    @contextlib.contextmanager
    def streaming(self, *, start: float, span_s: float) -> Iterator[Callable[[int, float], None]]:
        """A bar over the simulated time the devices stream (`span_s` from `start`), with the readings published
        so far beside it. It fills as the simulated clock passes the end of the span and is completed on exit:
        readings are not a usable total (warm-up gaps, hourly insulin and carb releases, a dead battery)."""
        hours = span_s / 3600
        progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), TaskProgressColumn(),
                            TextColumn("{task.fields[hours]}/{task.fields[total_h]} sim h · "
                                       "{task.fields[published]:,} readings"),
                            TimeElapsedColumn(), console=self.console)
        task = progress.add_task("streaming", total=span_s, hours="0.0", total_h=f"{hours:.1f}", published=0)

        def update(published: int, sim_now: float) -> None:
            done = min(max(sim_now - start, 0.0), span_s)
            progress.update(task, completed=done, hours=f"{done / 3600:.1f}", published=published)

        with progress:
            self.console = progress.console
            yield update
            progress.update(task, completed=span_s, hours=f"{hours:.1f}")

    def round_table(self, row: dict) -> None:
        title = f"round {row['round']}: {row['state']}"
        if row.get("model_version") is not None and row.get("gates_failed"):
            title += " (not promoted)"
        if row.get("model_version") is not None and "rmse30" in row:
            title += (f" — model v{row['model_version']}, RMSE@30 {row['rmse30']:.2f} mg/dL "
                      f"(persistence {row['persistence_rmse30']:.2f}), RMSE@60 {row['rmse60']:.2f} "
                      f"(persistence {row['persistence_rmse60']:.2f}), {row['bytes_up'] / 1e6:.2f} MB up, "
                      f"{row['seconds']:.1f} s")
        else:
            title += f" — {row.get('failure_reason')}"
        table = Table(title=title, title_justify="left")
        for col in ("participant", "trained on", "eps total", "eps round", "delta", "unit", "accountant"):
            table.add_column(col)
        for p, eps in row["epsilon"].items():  # row["windows"][p]: the update's n_samples, counted in eps["unit"]s
            table.add_row(p, f"{row['windows'][p]} {eps['unit']}s", f"{eps['value']:.3f}", f"{eps['round_value']:.3f}",
                          f"{eps['delta']:g}", f"per {eps['unit']}", eps["accountant"])
        for r in row["refusals"]:
            table.add_row(r["participant"], "-", "refused", "", "", "", r["reason"])
        self.console.print(table)
        held = held_back_reason(row) if row.get("model_version") is not None else None
        if held:  # the cloud's state ("evaluated") alone does not say that the model stays out of production, or why
            self.console.print(f"[bold yellow]round {row['round']} held back:[/bold yellow] {held}")

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

    def attack_drill(self, r: dict) -> None:
        if r.get("error"):
            self.warn(f"attack drill: {r['error']}")
        table = Table(title=f"attack drill during round {r['round']} (containment: the attacker's first request -> "
                            "the cloud's intrusion.contained)")
        for col in ("attack", "from", "requests", "rule", "contained", "audited", "alerted", "seconds"):
            table.add_column(col)
        for a in r["attacks"]:
            table.add_row(a["attack"], a["address"], str(a["requests"]), str(a["rule"]), str(a["contained"]),
                          str(a["audited"]), str(a["alerted"]), str(a["containment_seconds"]))
        self.console.print(table)
        self.console.print(f"containment: max {r['containment_seconds_max']} s, median "
                           f"{r['containment_seconds_median']} s (the secure-deployment study: {r['study_seconds']} s; "
                           f"goal under {r['goal_seconds']} s)")
