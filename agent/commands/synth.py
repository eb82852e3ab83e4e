"""`anomaly-agent synth OUT`: write a synthetic MVTec-style dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def _split_names(values: list[str] | None) -> list[str] | None:
    """`--categories a,b --categories c` -> [a, b, c]; None when not given."""
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()] or None


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., help="Output folder (one subfolder per category)."),
        seed: int = typer.Option(0, "--seed", help="Same seed, byte-identical files."),
        categories: list[str] | None = typer.Option(
            None,
            "--categories",
            "-c",
            help="Categories to write (repeat or comma-separate): fabric, metal, tray, board. "
            "Default: all.",
        ),
        n_train: int = typer.Option(8, "--n-train", help="Normal training images per category."),
        n_test: int = typer.Option(
            12, "--n-test", help="Test images per category: half good, half anomalous."
        ),
        size: int = typer.Option(256, "--size", help="Image side in pixels (64..1024)."),
    ) -> None:
        """Write a synthetic MVTec-style dataset (textures and arrangements, with masks)."""
        from rich.console import Console
        from rich.table import Table

        from evals.synthetic import generate_dataset

        summary = generate_dataset(
            out,
            seed=seed,
            categories=_split_names(categories),
            n_train=n_train,
            n_test=n_test,
            size=size,
        )
        table = Table(title=f"synthetic dataset in {summary['out_dir']} (seed {summary['seed']})")
        for col in ("category", "kind", "train/good", "test/good", "test anomalies", "masks"):
            table.add_column(
                col, justify="left" if col in ("category", "kind", "test anomalies") else "right"
            )
        for name, row in summary["categories"].items():
            test = dict(row["test"])
            good = test.pop("good", 0)
            anomalies = ", ".join(f"{k} {v}" for k, v in test.items())
            table.add_row(
                name,
                row["kind"],
                str(row["train"]["good"]),
                str(good),
                anomalies,
                str(row["masks"]),
            )
        console = Console()
        console.print(table)
        console.print(
            f"wrote {summary['n_images']} images and {summary['n_masks']} masks "
            f"({summary['size']}x{summary['size']} PNG) in {summary['seconds']:.1f} s"
        )
