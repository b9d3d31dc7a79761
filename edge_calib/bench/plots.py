"""PNG plots of a bench report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def write_plots(report, out_dir: Path) -> list[str]:
    """The latency and overhead plots of a ``report.BenchReport``; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ort = report.latency.get("onnxruntime", {})
    tables = [t for k, t in ort.items() if k.startswith("batch")]
    if tables:
        fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
        for ax, table in zip(axes[0], tables):
            names = list(table["configs"])
            medians = [table["configs"][n]["median"] for n in names]
            lows = [table["configs"][n]["median"] - table["configs"][n]["min"] for n in names]
            highs = [table["configs"][n]["p99"] - table["configs"][n]["median"] for n in names]
            ax.barh(names, medians, xerr=[lows, highs], color="#4c72b0", capsize=3)
            ax.set_xlabel("latency, ms (median; whiskers min..p99)")
            ax.set_title(f"ONNX Runtime, batch {table['batch']}")
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=120)
        plt.close(fig)
        written.append("latency.png")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        labels, values = [], []
        for table in tables:
            for domain, o in table["overhead"].items():
                for kind, v in o.items():
                    labels.append(f"{domain} {kind} b{table['batch']}")
                    values.append(v["pct"])
        ratios = report.overhead_ratios
        for name, r in ratios.items():
            labels.append(f"{name} params")
            values.append(r["params_pct_of_classifier"])
            labels.append(f"{name} MACs")
            values.append(r["macs_pct_of_classifier"])
        ax.barh(labels, values, color="#dd8452")
        ax.axvline(5.8, color="k", ls="--", lw=1)
        ax.text(5.8, -0.7, " paper: 5.8% params", fontsize=8)
        ax.set_xlabel("overhead, % of the classifier alone")
        fig.tight_layout()
        fig.savefig(out_dir / "overhead.png", dpi=120)
        plt.close(fig)
        written.append("overhead.png")
    return written
