"""The paper's figure 5: latency against image size, Mobile-Former against MobileNetV3-Large.

Mobile-Former's token side costs the same at every image size while its convolutions grow with
the pixels, so it gains on MobileNetV3 as images grow; the size where the accelerated model's
curve crosses MobileNetV3's is the figure's point and is marked on it.

With ONNX Runtime rows in the record (the default), the figure also draws both models exported
and run by ONNX Runtime, and reports where each of our paths (accelerated, frozen) crosses
MobileNetV3-Large run by ONNX Runtime: the fastest way a user could deploy the competitor.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

Series = List[Tuple[int, float, float, float]]  # (image size, median, q1, q3), ms


def find_crossovers(sizes: Sequence[int], ours: Sequence[float],
                    theirs: Sequence[float]) -> List[Tuple[float, str]]:
    """Every image size where ``ours`` and ``theirs`` cross, interpolated linearly between the
    measured sizes, with which way ("faster" = ours becomes the faster one). Noisy timings
    can cross more than once; all crossings are kept so that the report can say so."""
    gaps = [a - b for a, b in zip(ours, theirs)]
    found: List[Tuple[float, str]] = []
    for i, gap in enumerate(gaps):
        after = gaps[i + 1] if i + 1 < len(gaps) else None
        if after is None:
            break
        if gap == 0 and i > 0 and gaps[i - 1] * after < 0:  # a tie exactly at a measured size
            found.append((float(sizes[i]), "faster" if after < 0 else "slower"))
        elif gap * after < 0:
            fraction = gap / (gap - after)
            found.append((sizes[i] + fraction * (sizes[i + 1] - sizes[i]),
                          "faster" if gap > 0 else "slower"))
    return found


def find_crossover(sizes: Sequence[int], ours: Sequence[float],
                   theirs: Sequence[float]) -> Optional[Tuple[float, str]]:
    """The first crossing (see :func:`find_crossovers`), or None inside the measured range."""
    found = find_crossovers(sizes, ours, theirs)
    return found[0] if found else None


ACCELERATED = "Mobile-Former accelerated (eager)"
FROZEN = "Mobile-Former accelerated + frozen (eager)"
MOBILENET = "MobileNetV3-Large 1.0x (eager)"
MOBILENET_ORT = "MobileNetV3-Large 1.0x (ONNX Runtime)"
# (color, marker, line style) of each curve; runtimes dash-dotted (ORT) or dotted (OpenVINO)
STYLES = {
    "Mobile-Former reference (eager)": ("tab:gray", "o", "-"),
    "Mobile-Former reference (torch.compile)": ("tab:gray", "s", "--"),
    ACCELERATED: ("tab:blue", "o", "-"),
    "Mobile-Former accelerated (torch.compile)": ("tab:blue", "s", "--"),
    FROZEN: ("tab:green", "D", "-"),
    "Mobile-Former reference (ONNX Runtime)": ("tab:purple", "v", "-."),
    "Mobile-Former reference (OpenVINO)": ("tab:brown", "v", ":"),
    MOBILENET: ("tab:orange", "^", "-"),
    MOBILENET_ORT: ("tab:orange", "v", "-."),
    "MobileNetV3-Large 1.0x (OpenVINO)": ("tab:olive", "v", ":"),
}


def series_from_record(record: Dict, variant: str) -> Dict[str, Series]:
    """label -> [(size, median ms, first quartile, third quartile)] for the drawn rows."""
    mobilenet = "mobilenet_v3_large_1.0x"
    wanted = {
        (variant, "reference", False): "Mobile-Former reference (eager)",
        (variant, "reference", True): "Mobile-Former reference (torch.compile)",
        (variant, "accelerated", False): ACCELERATED,
        (variant, "accelerated", True): "Mobile-Former accelerated (torch.compile)",
        (variant, "frozen", False): FROZEN,
        (variant, "onnxruntime", False): "Mobile-Former reference (ONNX Runtime)",
        (variant, "openvino", False): "Mobile-Former reference (OpenVINO)",
        (mobilenet, "mobilenetv3", False): MOBILENET,
        (mobilenet, "onnxruntime", False): MOBILENET_ORT,
        (mobilenet, "openvino", False): "MobileNetV3-Large 1.0x (OpenVINO)",
    }
    series: Dict[str, Series] = {}
    for r in record["results"]:
        label = wanted.get((r["model"], r["kind"], r["compiled"]))
        if label and r.get("median_ms") is not None:
            median = r["median_ms"]
            series.setdefault(label, []).append(
                (r["size"], median, r.get("q1_ms", median), r.get("q3_ms", median)))
    return {label: sorted(points) for label, points in series.items()}


def crossover_from_series(series: Dict[str, Series], variant: str, ours_label: str = ACCELERATED,
                          theirs_label: str = MOBILENET) -> Dict[str, object]:
    """Where the curve ``ours_label`` crosses ``theirs_label``, with a sentence for the report."""
    ours = {p[0]: p[1] for p in series.get(ours_label, [])}
    theirs = {p[0]: p[1] for p in series.get(theirs_label, [])}
    sizes = sorted(set(ours) & set(theirs))
    found = find_crossovers(sizes, [ours[s] for s in sizes], [theirs[s] for s in sizes])
    path = "accelerated + frozen" if ours_label == FROZEN else "accelerated"
    name = f"{path} MF-" + variant.split("_")[-1].upper()
    them = theirs_label.replace(" (eager)", "").replace(" (ONNX Runtime)",
                                                        " under ONNX Runtime")
    block: Dict[str, object] = {"ours": ours_label, "theirs": theirs_label,
                                "crossovers": [[round(size, 1), way] for size, way in found]}
    if not sizes:
        return {**block, "crossover_size": None, "crossover_direction": None,
                "crossover_note": f"{name} against {them}: no crossover in range "
                                  "(nothing measured)"}
    if not found:
        faster = ours[sizes[0]] < theirs[sizes[0]]
        note = (f"no crossover in range ({sizes[0]}-{sizes[-1]} px): {name} is "
                f"{'faster' if faster else 'slower'} than {them} at every measured size")
        return {**block, "crossover_size": None, "crossover_direction": None,
                "crossover_note": note}
    size, direction = found[0]
    note = (f"crossover at {size:.0f} px: from there {name} is {direction} than {them} "
            "(linear interpolation between measured sizes)")
    if len(found) > 1:
        note += (f"; the curves cross {len(found)} times in all (at "
                 + ", ".join(f"{s:.0f}" for s, _ in found)
                 + " px): the timings are noisy, rerun on a quieter machine")
    return {**block, "crossover_size": size, "crossover_direction": direction,
            "crossover_note": note}


def plot(series: Dict[str, Series], crossover: Dict[str, object], path: str, title: str,
         against_ort: Sequence[Dict[str, object]] = ()) -> str:
    """Draw the figure as a PNG (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for label, points in series.items():
        color, marker, line = STYLES.get(label, ("black", "x", ":"))
        sizes, ms, q1, q3 = (list(column) for column in zip(*points))
        # error bars: the interquartile range of the repeats, the spread the median hides
        spread = [[m - lo for m, lo in zip(ms, q1)], [hi - m for m, hi in zip(ms, q3)]]
        ax.errorbar(sizes, ms, yerr=spread, marker=marker, linestyle=line, color=color,
                    label=label, capsize=3, markersize=5)
    for index, (size, _) in enumerate(crossover.get("crossovers") or []):
        ax.axvline(size, color="tab:red", linestyle=":", linewidth=1.2,
                   label="crossover (accelerated vs MobileNetV3)" if index == 0 else None)
        ax.annotate(f"{size:.0f} px", xy=(size, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12 - 11 * index), textcoords="offset points", color="tab:red",
                    fontsize=8)  # staggered: noisy curves can cross at nearby sizes
    marked = len(crossover.get("crossovers") or [])
    for block in against_ort:  # our paths against MobileNetV3 under ONNX Runtime
        color = STYLES[block["ours"]][0]
        for index, (size, _) in enumerate(block.get("crossovers") or []):
            ax.axvline(size, color=color, linestyle="-.", linewidth=1.0,
                       label=(f"crossover ({block['ours'].split('Mobile-Former ')[-1]} vs "
                              "MobileNetV3 under ORT)") if index == 0 else None)
            ax.annotate(f"{size:.0f} px", xy=(size, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4 + 11 * marked), textcoords="offset points", color=color,
                        fontsize=8)
            marked += 1
    if not crossover.get("crossovers"):
        ax.text(0.98, 0.03, "no crossover in range (accelerated vs MobileNetV3, eager)",
                transform=ax.transAxes, color="tab:red", ha="right", va="bottom", fontsize=8)
    all_sizes = sorted({point[0] for points in series.values() for point in points})
    ax.set_xticks(all_sizes)
    ax.set_xlabel("image size (px, square)")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
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
    # both of our paths against MobileNetV3 under ONNX Runtime, when the figure has that curve
    against_ort = [crossover_from_series(series, variant, ours, MOBILENET_ORT)
                   for ours in (ACCELERATED, FROZEN) if ours in series and MOBILENET_ORT in series]
    env, config = record["environment"], record["config"]
    machine = env.get("gpu") if config["device"] == "cuda" else env.get("cpu")
    title = (f"{variant} vs MobileNetV3-Large, batch {config['batch']}, {config['dtype']}, "
             f"{config['threads']} thread(s)\n{machine}, load average at start "
             f"{env.get('load_average_at_start')}; bars: interquartile range")
    plot(series, crossover, path, title, against_ort)
    return {"png": os.path.basename(path), "variant": variant,
            "series": {k: [list(p) for p in v] for k, v in series.items()}, **crossover,
            "against_ort": against_ort}
