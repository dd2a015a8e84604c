"""The paper's figure 5: latency against image size, Mobile-Former against MobileNetV3-Large.

Mobile-Former's token side costs the same at every image size while its convolutions grow with
the pixels, so it gains on MobileNetV3 as images grow; the size where the accelerated model's
curve crosses MobileNetV3's is the figure's point and is marked on it.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

Series = List[Tuple[int, float]]  # (image size, median latency in ms)


def find_crossover(sizes: Sequence[int], ours: Sequence[float],
                   theirs: Sequence[float]) -> Optional[Tuple[float, str]]:
    """The first image size where ``ours`` and ``theirs`` cross, interpolated linearly between
    the measured sizes, and which way: ("faster" = ours becomes the faster one). None when the
    curves do not cross inside the measured range."""
    gaps = [a - b for a, b in zip(ours, theirs)]
    for i, gap in enumerate(gaps):
        if gap == 0:
            direction = "faster" if i + 1 < len(gaps) and gaps[i + 1] < 0 else "slower"
            return float(sizes[i]), direction
        if i + 1 < len(gaps) and gap * gaps[i + 1] < 0:
            fraction = gap / (gap - gaps[i + 1])
            size = sizes[i] + fraction * (sizes[i + 1] - sizes[i])
            return size, "faster" if gap > 0 else "slower"
    return None


def series_from_record(record: Dict, variant: str) -> Dict[str, Series]:
    """label -> [(size, median ms)] for the rows the figure draws."""
    wanted = {
        (variant, "reference", False): "Mobile-Former reference (eager)",
        (variant, "reference", True): "Mobile-Former reference (torch.compile)",
        (variant, "accelerated", False): "Mobile-Former accelerated (eager)",
        (variant, "accelerated", True): "Mobile-Former accelerated (torch.compile)",
        ("mobilenet_v3_large_1.0x", "mobilenetv3", False): "MobileNetV3-Large 1.0x (eager)",
    }
    series: Dict[str, Series] = {}
    for r in record["results"]:
        label = wanted.get((r["model"], r["kind"], r["compiled"]))
        if label and r.get("median_ms") is not None:
            series.setdefault(label, []).append((r["size"], r["median_ms"]))
    return {label: sorted(points) for label, points in series.items()}


def crossover_from_series(series: Dict[str, Series], variant: str) -> Dict[str, object]:
    ours = dict(series.get("Mobile-Former accelerated (eager)", []))
    theirs = dict(series.get("MobileNetV3-Large 1.0x (eager)", []))
    sizes = sorted(set(ours) & set(theirs))
    found = find_crossover(sizes, [ours[s] for s in sizes], [theirs[s] for s in sizes])
    name = "MF-" + variant.split("_")[-1].upper()
    if found is None:
        note = (f"no crossover in range ({sizes[0]}-{sizes[-1]} px): accelerated {name} is "
                + ("faster" if sizes and ours[sizes[0]] < theirs[sizes[0]] else "slower")
                + " than MobileNetV3-Large 1.0x at every measured size") if sizes else \
            "no crossover in range (nothing measured)"
        return {"crossover_size": None, "crossover_direction": None, "crossover_note": note}
    size, direction = found
    note = (f"crossover at {size:.0f} px: above it accelerated {name} is {direction} than "
            "MobileNetV3-Large 1.0x (linear interpolation between measured sizes)")
    return {"crossover_size": size, "crossover_direction": direction, "crossover_note": note}


def plot(series: Dict[str, Series], crossover: Dict[str, object], path: str,
         title: str) -> str:
    """Draw the figure as a PNG (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"reference (eager)": ("tab:gray", "o", "-"),
              "reference (torch.compile)": ("tab:gray", "s", "--"),
              "accelerated (eager)": ("tab:blue", "o", "-"),
              "accelerated (torch.compile)": ("tab:blue", "s", "--"),
              "MobileNetV3": ("tab:orange", "^", "-")}
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for label, points in series.items():
        color, marker, line = next((v for k, v in styles.items() if k in label),
                                   ("black", "x", ":"))
        sizes, ms = zip(*points)
        ax.plot(sizes, ms, marker=marker, linestyle=line, color=color, label=label)
    size = crossover.get("crossover_size")
    if size is not None:
        ax.axvline(size, color="tab:red", linestyle=":", linewidth=1.2)
        ax.annotate(f"crossover ~{size:.0f} px", xy=(size, 0.5), xycoords=("data", "axes fraction"),
                    xytext=(6, 0), textcoords="offset points", color="tab:red", rotation=90,
                    va="center")
    else:
        ax.text(0.02, 0.96, "no crossover in range", transform=ax.transAxes, color="tab:red",
                va="top")
    all_sizes = sorted({s for points in series.values() for s, _ in points})
    ax.set_xticks(all_sizes)
    ax.set_xlabel("image size (px, square)")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.9) if size is None else None)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def make_figure5(record: Dict, path: str) -> Dict[str, object]:
    """Plot the record's first variant against MobileNetV3-Large 1.0x; return the record's
    ``figure5`` block (file name, crossover, the plotted series)."""
    variant = record["config"]["variants"][0]
    series = series_from_record(record, variant)
    crossover = crossover_from_series(series, variant)
    env, config = record["environment"], record["config"]
    machine = env.get("gpu") if config["device"] == "cuda" else env.get("cpu")
    title = (f"{variant} vs MobileNetV3-Large, batch {config['batch']}, {config['dtype']}, "
             f"{config['threads']} thread(s)\n{machine}")
    plot(series, crossover, path, title)
    return {"png": os.path.basename(path), "variant": variant,
            "series": {k: [list(p) for p in v] for k, v in series.items()}, **crossover}
