#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Turns headroom_bench's JSON output into the SVG charts of the README.

Regenerate the charts from a fresh run (repository root; needs Debian's python3-matplotlib):

    cmake --preset bench && cmake --build --preset bench -j2 --target headroom_bench && \
    ./build/bench/bench/headroom_bench --benchmark_repetitions=3 \
        --benchmark_report_aggregates_only=true --benchmark_out=bench.json \
        --benchmark_out_format=json && python3 bench/plots.py bench.json bench/charts

Writes prefill.svg (FLOP rate vs sequence length against the FMA peak), decode.svg (K+V read rate
vs cache length against the read probe run next to each step, per variant and element type) and
kv_bytes.svg (KV cache bytes per token of MHA / GQA / MQA / MLA). Medians are used when the run has
repetitions. A chart whose benchmarks are missing from the JSON (a filtered run) is skipped with a
message; the others are still written.
"""
import argparse
import json
import os
import re
import sys

# The one parser of run names, shared with the tables; importing it leaves no __pycache__ in bench/.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_tables import medians  # noqa: E402

try:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on build machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator
except ImportError:
    sys.exit("plots.py needs matplotlib: apt install python3-matplotlib (and run that python3, "
             "/usr/bin/python3, if another one comes first on PATH)")

VARIANTS = ("mha", "gqa", "mqa")
ELEMENTS = ("f32", "bf16", "int8")
THREADS = (1, 2)
ROOF_LABEL_OFFSETS = {"mha": (6, -12), "gqa": (-24, 5), "mqa": (6, 3)}  # points
COLORS = {"mha": "tab:blue", "gqa": "tab:orange", "mqa": "tab:green", "mla": "tab:red",
          "gqa8": "tab:orange", 1: "tab:blue", 2: "tab:orange"}

# Stable SVG output (no date, fixed ids), so regenerated charts differ only where the numbers do.
plt.rcParams.update({"svg.hashsalt": "headroom", "svg.fonttype": "none", "font.size": 9})


def machine_of(path):
    """The machine a run was measured on, from the context headroom_bench writes to its JSON."""
    context = json.load(open(path)).get("context", {})
    cores = context.get("num_cpus")
    model = context.get("cpu_model", "unknown CPU")
    return f"{cores} cores of {model}" if cores else model


def has_counters(run, *names):
    """Whether a run has these counters: one that failed (SkipWithError) has none."""
    return not run.get("error_occurred") and all(name in run for name in names)


def log2_lengths(ax, lengths, label):
    """Sets a log x axis ticked at exactly the lengths measured, written out in full."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(lengths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in sorted(lengths)])
    ax.set_xlabel(label)
    # Half an octave of margin each side, so end points and their labels stay inside the axes.
    ax.set_xlim(min(lengths) / 1.5, max(lengths) * 1.5)


def figure_legend(fig, axes, **kwargs):
    """One legend under the panels with every series any panel drew (a filtered run may leave a
    panel without some of them)."""
    entries = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=4, **kwargs)


def save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    print(f"wrote {path}")
    return True


def prefill_chart(runs, out_dir, machine):
    """FLOP rate of causal prefill vs S, one panel per thread count, against that count's FMA peak
    (and the 0.75 target of issue 6); the naive Eigen baseline faint, for scale."""
    points = {}  # (variant, threads) -> {S: run}
    naive = {}
    bf16 = {}  # the same with bf16 q, k, v
    for name, run in runs.items():
        m = re.match(r"BM_Prefill(Naive|Bf16)?/(\w+)/S:(\d+)/threads:(\d+)$", name)
        if m and has_counters(run, "FLOPS", "roof"):
            series = {"Naive": naive, "Bf16": bf16}.get(m[1], points)
            series.setdefault((m[2], int(m[4])), {})[int(m[3])] = run
    if not points:
        print("prefill chart skipped: no BM_Prefill/<variant>/S:<n>/threads:<t> in the JSON",
              file=sys.stderr)
        return
    threads = sorted({t for _, t in points})
    fig, axes = plt.subplots(1, len(threads), figsize=(5.2 * len(threads), 4.2), squeeze=False)
    for ax, t in zip(axes[0], threads):
        lengths = set()
        for variant in VARIANTS:
            series = points.get((variant, t))
            if not series:
                continue
            xs = sorted(series)
            lengths.update(xs)
            ys = [series[s]["FLOPS"] / 1e9 for s in xs]
            ax.plot(xs, ys, "o-", color=COLORS[variant], label=f"headroom {variant}")
            for s, y in zip(xs, ys):  # staggered: the variants' rates are often close
                ax.annotate(f"{series[s]['roof']:.2f}", (s, y), textcoords="offset points",
                            xytext=ROOF_LABEL_OFFSETS[variant], fontsize=7, color=COLORS[variant])
            fast = bf16.get((variant, t))
            if fast:
                xs_bf16 = sorted(fast)
                lengths.update(xs_bf16)
                ax.plot(xs_bf16, [fast[s]["FLOPS"] / 1e9 for s in xs_bf16], "s--",
                        color=COLORS[variant], label=f"headroom {variant}, bf16 q/k/v")
            slow = naive.get((variant, t))
            if slow:
                xs_naive = sorted(slow)
                ax.plot(xs_naive, [slow[s]["FLOPS"] / 1e9 for s in xs_naive], "x:",
                        color=COLORS[variant], alpha=0.5, label=f"naive Eigen {variant}")
        peak = runs.get(f"BM_PeakFma/threads:{t}")
        if peak and has_counters(peak, "FLOPS"):
            ax.axhline(peak["FLOPS"] / 1e9, color="black", lw=1.2,
                       label="FP32 FMA peak, same threads (BM_PeakFma)")
            ax.annotate(f"peak {peak['FLOPS'] / 1e9:.0f} GFLOP/s", (0.02, peak["FLOPS"] / 1e9),
                        xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(0, 3), fontsize=7)
            top = max([series[s]["FLOPS"] for group in (points, bf16) for (_, tt), series
                       in group.items() if tt == t for s in series], default=0.0)
            ax.set_ylim(0, 1.12 * max(peak["FLOPS"], top) / 1e9)
            ax.axhline(0.75 * peak["FLOPS"] / 1e9, color="black", lw=0.8, ls="--",
                       label="0.75 of the peak (issue 6 target)")
            scale = peak["FLOPS"] / 1e9
            fraction = ax.secondary_yaxis("right", functions=(lambda y, c=scale: y / c,
                                                              lambda f, c=scale: f * c))
            fraction.set_ylabel("fraction of the FMA peak (roof)")
        else:
            print(f"prefill chart: no BM_PeakFma/threads:{t}, panel drawn without its peak line",
                  file=sys.stderr)
        log2_lengths(ax, lengths, "sequence length S (tokens, log scale)")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.grid(True, alpha=0.3)
    figure_legend(fig, axes, fontsize=8)
    fig.suptitle("Causal prefill, B=1, Hq=32 (GQA Hkv=8, MQA Hkv=1), D=128, f32 (bf16 dashed): FLOP rate vs "
                 f"sequence length\n{machine}; numbers at points: fraction of the FMA peak (roof)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return save(fig, out_dir, "prefill.svg")


def decode_chart(runs, out_dir, machine):
    """K+V bytes read per second by one decode step vs cache length, a panel per element type and
    variant, against the DRAM read rate the probe measured right after each step (the host's
    bandwidth drifts, so each point has its own stream line rather than one for the run)."""
    points = {}  # (element, variant, threads) -> {kv_len: run}
    for name, run in runs.items():
        m = re.match(r"BM_Decode/(\w+)/(\w+)/kv:(\d+)/threads:(\d+)$", name)
        if m and has_counters(run, "bytes_per_second", "roof"):
            points.setdefault((m[1], m[2], int(m[4])), {})[int(m[3])] = run
    if not points:
        print("decode chart skipped: no BM_Decode/<type>/<variant>/kv:<n>/threads:<t> in the JSON",
              file=sys.stderr)
        return
    elements = [e for e in ELEMENTS if any(k[0] == e for k in points)]
    elements += sorted({k[0] for k in points} - set(elements))
    variants = [v for v in VARIANTS if any(k[1] == v for k in points)]
    variants += sorted({k[1] for k in points} - set(variants))
    fig, axes = plt.subplots(len(elements), len(variants), sharex=True, sharey=True,
                             figsize=(3.6 * len(variants) + 0.6, 2.9 * len(elements) + 0.9),
                             squeeze=False)
    lengths = sorted({n for series in points.values() for n in series})
    top = max(max(run["bytes_per_second"], run.get("read_bw", 0.0))
              for series in points.values() for run in series.values()) / 1e9
    for row, element in enumerate(elements):
        for col, variant in enumerate(variants):
            ax = axes[row][col]
            for t in THREADS:
                series = points.get((element, variant, t))
                if not series:
                    continue
                xs = sorted(series)
                ys = [series[n]["bytes_per_second"] / 1e9 for n in xs]
                label = f"{t} thread{'s' if t > 1 else ''}"
                ax.plot(xs, ys, "o-", color=COLORS[t], label=f"decode, {label}")
                if all("read_bw" in series[n] for n in xs):
                    ax.plot(xs, [series[n]["read_bw"] / 1e9 for n in xs], "^--", color=COLORS[t],
                            mfc="none", alpha=0.8, label=f"read probe, {label}")
                for n, y in zip(xs, ys):
                    # 1 thread below its line, 2 above, since they can be close; 1 thread's to
                    # the left instead when below would fall under the axis.
                    offset = (5, 4) if t != 1 else (-24, 3) if y < 0.1 * top else (5, -10)
                    ax.annotate(f"{series[n]['roof']:.2f}", (n, y), textcoords="offset points",
                                xytext=offset, fontsize=7, color=COLORS[t])
            ax.set_title(f"{variant}, {element}")
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
            if col == 0:
                ax.set_ylabel("K+V read rate (GB/s)")
            if row == len(elements) - 1:
                log2_lengths(ax, lengths, "cached tokens (log scale)")
    if not any("read_bw" in run for series in points.values() for run in series.values()):
        print("decode chart: no read_bw counters (an older run), drawn without stream lines",
              file=sys.stderr)
    figure_legend(fig, axes, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Decode step, B=1, Hq=32 (GQA Hkv=8, MQA Hkv=1), D=128, causal: K+V bytes read "
                 f"per second vs cache length\n{machine}. Stream line: the read_bw counter of each "
                 "point (a DRAM read probe over as many bytes, run right after each step).\n"
                 "Numbers at points: roof = max(FLOPs / FMA peak, bytes / read_bw) / time; "
                 "MQA is compute-bound, so its bytes/s stay far below the stream line.")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save(fig, out_dir, "decode.svg")


# DeepSeek-V2 (arXiv:2405.04434, Table 1 and section 2.1): n_h = 128 heads of d_h = 128, latent
# d_c = 512 plus a shared RoPE key of d_h^R = 64; per layer and token, in elements.
DEEPSEEK_V2_ELEMENTS = {"mha": 2 * 128 * 128, "gqa8": 2 * 8 * 128, "mqa": 2 * 128, "mla": 512 + 64}


def kv_bytes_chart(runs, out_dir, machine):
    """KV cache bytes per token per layer of MHA / GQA / MQA / MLA: measured from the caches of
    BM_KvBudget (with their decode rate), and computed at DeepSeek-V2's scale for comparison."""
    measured = {}
    for name, run in runs.items():
        m = re.match(r"BM_KvBudget/(\w+)/(\w+)/(\w+)/kv:(\d+)$", name)
        if m and has_counters(run, "bytes_per_token"):
            measured[m[3]] = (run, m[1], m[2], int(m[4]))
    if not measured:
        print("kv_bytes chart skipped: no BM_KvBudget/<type>/<shape>/<variant>/kv:<n> in the JSON",
              file=sys.stderr)
        return
    order = [v for v in ("mha", "gqa8", "mqa", "mla") if v in measured]
    order += sorted(set(measured) - set(order))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))

    run0, element, shape, context = measured[order[0]]
    values = [measured[v][0]["bytes_per_token"] for v in order]
    bars = left.bar(order, values, color=[COLORS.get(v, "tab:gray") for v in order])
    for bar, v in zip(bars, order):
        run = measured[v][0]
        text = f"{run['bytes_per_token']:.0f} B"
        if "tok_s" in run:
            text += f"\n{run['tok_s']:.0f} tok/s"
        left.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    left.set_ylabel("KV cache bytes per token, per layer")
    left.set_ylim(top=max(values) * 1.25)
    left.set_title(f"measured (BM_KvBudget, {element}): 16 query heads x 128 ({shape}),\n"
                   "MLA: DeepSeek-V2-Lite's latent (512 + RoPE key 64);\n"
                   f"decode tok/s of one layer's attention at {context} tokens, 2 threads")

    names = list(DEEPSEEK_V2_ELEMENTS)
    sizes = [2 * DEEPSEEK_V2_ELEMENTS[v] for v in names]  # bf16
    bars = right.bar(names, sizes, color=[COLORS[v] for v in names])
    for bar, size in zip(bars, sizes):
        right.annotate(f"{size} B\n{sizes[0] / size:.0f}x smaller" if size < sizes[0]
                       else f"{size} B", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    right.set_ylabel("KV cache bytes per token, per layer (bf16)")
    right.set_ylim(top=max(sizes) * 1.25)
    right.set_title("computed from the dims, not measured: DeepSeek-V2 scale,\n"
                    "128 heads x 128, GQA with 8 groups,\n"
                    "MLA latent 512 + RoPE key 64 (arXiv:2405.04434, Table 1)")
    for ax in (left, right):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"KV cache per token: MHA / GQA / MQA / MLA\n{machine}")
    fig.tight_layout()
    return save(fig, out_dir, "kv_bytes.svg")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="the file of headroom_bench --benchmark_out_format=json")
    parser.add_argument("--machine", help="what the run was measured on, for the chart titles "
                        "(default: the CPU model and core count headroom_bench recorded)")
    parser.add_argument("out_dir", nargs="?",
                        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "charts"),
                        help="folder for the SVG files (default: bench/charts)")
    args = parser.parse_args()
    runs = medians(args.json)
    os.makedirs(args.out_dir, exist_ok=True)
    machine = args.machine or machine_of(args.json)
    written = [chart(runs, args.out_dir, machine)
               for chart in (prefill_chart, decode_chart, kv_bytes_chart)]
    if not any(written):
        sys.exit(f"no chart written: {args.json} has none of the benchmarks they need")


if __name__ == "__main__":
    main()
