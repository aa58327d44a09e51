#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Turns headroom_bench's JSON output into the Markdown tables of the README.

Usage: headroom_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
           --benchmark_out=bench.json --benchmark_out_format=json
       python3 bench/bench_tables.py bench.json
Medians are used when the run has repetitions.
"""
import json
import re
import sys


def medians(path):
    """Returns {benchmark name without suffixes (iterations, time kind): run} for median aggregates
    or plain runs."""
    runs = json.load(open(path))["benchmarks"]
    have_aggregates = any(r.get("run_type") == "aggregate" for r in runs)
    result = {}
    for run in runs:
        if have_aggregates and run.get("aggregate_name") != "median":
            continue
        name = re.sub(r"(/iterations:\d+)?/(real_time|manual_time)(_median)?$", "",
                      run["run_name"])
        result[name] = run
    return result


def fmt(value, digits=2):
    return f"{value:.{digits}f}"


def table(runs, pattern, header, row):
    """Prints a Markdown table of the runs whose name matches `pattern`, after a blank line; row(m,
    run) gives a run's cells from its regex match."""
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, run in runs.items():
        m = re.match(pattern, name)
        if m:
            print("| " + " | ".join(row(m, run)) + " |")


def main(path):
    runs = medians(path)
    print("| probe | threads | value |")
    print("|---|---|---|")
    for threads in (1, 2):
        fma = runs.get(f"BM_PeakFma/threads:{threads}")
        if fma:
            print(f"| FP32 FMA peak | {threads} | {fmt(fma['FLOPS'] / 1e9, 1)} GFLOP/s |")
        best = max((r["bytes_per_second"] for n, r in runs.items()
                    if n.startswith(f"BM_ReadBandwidth/threads:{threads}/")), default=None)
        if best:
            print(f"| DRAM read (best of 1/2/4 streams) | {threads} | {fmt(best / 1e9, 1)} GB/s |")
    for threads in (1, 2):
        sgemm = runs.get(f"BM_EigenSgemm/threads:{threads}")
        if sgemm:
            print(f"| Eigen SGEMM 2048^3 (reference, not a probe) | {threads} | "
                  f"{fmt(sgemm['FLOPS'] / 1e9, 1)} GFLOP/s, roof {fmt(sgemm['roof'])} |")

    def prefill_row(m, run):
        naive = runs.get(m[0].replace("BM_Prefill/", "BM_PrefillNaive/"))
        ratio = f"{fmt(naive['real_time'] / run['real_time'], 1)}x" if naive else "-"
        return [m[1], m[2], m[3], fmt(run["real_time"], 1), fmt(run["FLOPS"] / 1e9, 1),
                fmt(run["roof"]), ratio]

    table(runs, r"BM_Prefill/(\w+)/S:(\d+)/threads:(\d+)$",
          ["prefill, causal, B=1, Hq=32, D=128", "S", "threads", "ms", "GFLOP/s", "roof",
           "vs naive"], prefill_row)
    def bf16_row(m, run):
        f32 = runs.get(m[0].replace("BM_PrefillBf16/", "BM_Prefill/"))
        ratio = run["FLOPS"] / f32["FLOPS"] if f32 else float("nan")
        return [m[1], m[2], m[3], fmt(run["real_time"], 1), fmt(run["FLOPS"] / 1e9, 1),
                fmt(run["roof"]), f"{fmt(ratio)}x"]

    table(runs, r"BM_PrefillBf16/(\w+)/S:(\d+)/threads:(\d+)$",
          ["prefill bf16 q/k/v, causal, Hq=32, D=128", "S", "threads", "ms", "GFLOP/s",
           "roof (f32 peak)", "vs f32"], bf16_row)
    def decode_row(time_digits):
        """Returns the row of a decode run: its time in us with `time_digits` decimals."""
        return lambda m, run: [m[2], m[1], m[3], m[4], fmt(run["real_time"], time_digits),
                               fmt(run["tok_s"], 0), fmt(run["bytes_per_second"] / 1e9, 1),
                               fmt(run["read_bw"] / 1e9, 1), fmt(run["roof"])]

    decode_columns = ["type", "cache", "threads", "us/step", "tok/s", "GB/s", "probe GB/s", "roof"]
    table(runs, r"BM_Decode/(\w+)/(\w+)/kv:(\d+)/threads:(\d+)$",
          ["decode, B=1, Hq=32, D=128"] + decode_columns, decode_row(0))
    table(runs, r"BM_DecodeShort/(\w+)/(\w+)/kv:(\d+)/threads:(\d+)$",
          ["decode, short caches, B=1, Hq=32, D=128"] + decode_columns, decode_row(1))
    table(runs, r"BM_MlaDecode/(\w+)/(\w+)/kv:(\d+)/threads:(\d+)$",
          ["MLA decode, DeepSeek-V2-Lite attention", "type", "cache", "threads", "ms/step",
           "tok/s", "GB/s", "roof"],
          lambda m, run: [m[2], m[1], m[3], m[4], fmt(run["real_time"] / 1e3, 2),
                          fmt(run["tok_s"], 0), fmt(run["bytes_per_second"] / 1e9, 1),
                          fmt(run["roof"])])
    table(runs, r"BM_DecoderStep/(\w+)/threads:(\d+)$",
          ["decoder step, 4 Llama-3.2-1B layers, 32k vocab", "weights", "threads", "ms/step",
           "tok/s", "GB/s", "probe GB/s", "roof"],
          lambda m, run: ["", m[1], m[2], fmt(run["real_time"], 1), fmt(run["tok_s"], 1),
                          fmt(run["bytes_per_second"] / 1e9, 1), fmt(run["read_bw"] / 1e9, 1),
                          fmt(run["roof"])])
    table(runs, r"BM_KvBudget/\w+/\w+/(\w+)/kv:(\d+)$",
          ["KV budget, 16 heads x 128, bf16", "bytes/token", "MiB per 32k context",
           "decode tok/s (2 threads)"],
          lambda m, run: [m[1], fmt(run["bytes_per_token"], 0), fmt(run["MiB_per_32k"], 0),
                          fmt(run["tok_s"], 0)])

    rerope_names = {"rope": "RoPE (q, k pre-rotated)", "rerope": "ReRoPE",
                    "leaky": "Leaky ReRoPE, k=16"}

    def vs_rope(m, run):
        """Returns a ReRoPE run's time over ordinary RoPE's on the same shape, as "1.23x"."""
        rope = runs.get(m[0].replace(f"/{m[1]}/", "/rope/"))
        return f"{fmt(run['real_time'] / rope['real_time'])}x" if rope else "n/a"

    table(runs, r"BM_ReRopePrefill/(\w+)/S:(\d+)/threads:(\d+)$",
          ["ReRoPE prefill, causal, GQA 32/8, D=128, w=512", "S", "threads", "ms", "GFLOP/s",
           "roof", "vs rope (target <= 1.3x)"],
          lambda m, run: [rerope_names[m[1]], m[2], m[3], fmt(run["real_time"], 0),
                          fmt(run["FLOPS"] / 1e9, 1), fmt(run["roof"]), vs_rope(m, run)])
    table(runs, r"BM_ReRopeDecode/\w+/(\w+)/kv:(\d+)/threads:(\d+)$",
          ["ReRoPE decode, f32, GQA 32/8, D=128, w=512", "cache", "threads", "us/step", "tok/s",
           "roof", "vs rope (target <= 1.2x)"],
          lambda m, run: [rerope_names[m[1]], m[2], m[3], fmt(run["real_time"], 0),
                          fmt(run["tok_s"], 0), fmt(run["roof"]), vs_rope(m, run)])

    for name, run in runs.items():
        m = re.match(r"BM_PrefillMemory/S:(\d+)/threads:(\d+)", name)
        if m:
            print()
            print(f"Prefill at S = {m[1]} ({m[2]} threads): {fmt(run['extra_MiB'], 1)} MiB resident "
                  f"beyond its {fmt(run['data_MiB'], 0)} MiB of inputs and output "
                  f"(limit {fmt(run['limit_MiB'], 0)} MiB).")


if __name__ == "__main__":
    main(sys.argv[1])
