"""What the zones hold: row and file counts per zone and dataset, from Parquet footers."""

from __future__ import annotations

from typing import Any

from upath import UPath

from pseudozone import ledger, state, zones
from pseudozone.config import Settings


def _rows(files: list[UPath]) -> int:
    return sum(zones.read_metadata(f).num_rows for f in files)


def zone_counts(settings: Settings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for zone, root in (("events", settings.event_zone), ("pii", settings.pii_zone),
                       ("restricted", settings.restricted_zone)):
        if not root.exists():
            continue
        for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = zones.parquet_files(dataset_dir)
            out.append({"zone": zone, "dataset": dataset_dir.name, "files": len(files),
                        "rows": _rows(files)})
    quarantined = sorted(settings.quarantine.rglob("*.reason.json")) if settings.quarantine.exists() else []
    out.append({"zone": "quarantine", "dataset": "*", "files": len(quarantined), "rows": None})
    return out


def batch_summary(settings: Settings) -> list[dict[str, Any]]:
    with state.connect(settings) as conn:
        return ledger.summary(conn)


def format_table(columns: list[str], rows: list[tuple[Any, ...]] | list[list[Any]]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])


def status(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Files and rows per zone and the batch ledger's summary (``pseudozone status``); it reads
    only: a root without a state database gets no ledger rather than a new database."""
    batches = batch_summary(settings) if state.exists(settings) else []
    return {"zones": zone_counts(settings), "batches": batches}


def status_text(settings: Settings) -> str:
    shown = status(settings)
    counts, batches = shown["zones"], shown["batches"]
    parts = ["Zones under " + str(settings.zones),
             format_table(["zone", "dataset", "files", "rows"],
                          [[c["zone"], c["dataset"], c["files"], c["rows"]] for c in counts])]
    if batches:
        parts += ["", "Batch ledger",
                  format_table(["dataset", "status", "batches", "rows_in", "rows_event", "rows_pii"],
                               [list(b.values()) for b in batches])]
    return "\n".join(parts)
