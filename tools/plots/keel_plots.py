#!/usr/bin/python3
"""Turn keel-perf and Google Benchmark JSON into PNG plots.

  keel_plots.py --out DIR [--qd-sweep keel-perf-sweep.json] [--latency keel-perf.json]
                [--gbench keel_bench_rtl.json ...]

  iops_vs_qd.png          IOPS against queue depth, per path    (keel-perf --sweep iodepth=...)
  cpu_vs_qd.png           host CPU ns per IO against queue depth, per path
  latency_percentiles.png p50/p90/p99/p99.9 per path            (keel-perf --json)
  cycles_per_cmd.png      card cycles per command per case      (keel_bench_rtl JSON)
  gbench_<counter>.png    any other Google Benchmark counter asked for with --counter

Runs with Debian's /usr/bin/python3 and python3-matplotlib (no display needed).
"""
import argparse
import json
import os
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("keel_plots: needs python3-matplotlib (apt-get install python3-matplotlib) "
             "and Debian's /usr/bin/python3")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"keel_plots: cannot read {path}: {e}")


def qd_sweep(doc, out):
    sweep = doc.get("sweep")
    if not sweep or sweep.get("param") != "iodepth":
        sys.exit("keel_plots: --qd-sweep needs keel-perf JSON from --sweep iodepth=...")
    series = {}
    for point in sweep["points"]:
        qd = point["options"]["iodepth"]
        for job in point["jobs"]:
            k = job.get("keel", job)  # keel's figures: in "keel" since fio's layout
            s = series.setdefault(k["path"], {"qd": [], "iops": [], "cpu": []})
            s["qd"].append(qd)
            s["iops"].append(k["iops"])
            s["cpu"].append(k["host_cpu_ns_per_io"])
    for key, ylabel, name in (("iops", "IOPS", "iops_vs_qd.png"),
                              ("cpu", "host CPU ns per IO", "cpu_vs_qd.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for path, s in sorted(series.items()):
            ax.plot(s["qd"], s[key], marker="o", label=f"path={path}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("queue depth")
        ax.set_ylabel(ylabel)
        ax.set_title(f"keel-perf: {ylabel} against queue depth")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        print(os.path.join(out, name))


def rate_sweep(doc, out):
    """Host CPU per IO against the offered rate (keel-perf --sweep rate_iops=...), both paths:
    what a guest costs at 1k, 10k, 100k IOPS, not only flat out."""
    sweep = doc.get("sweep")
    if not sweep or sweep.get("param") != "rate_iops":
        sys.exit("keel_plots: --rate-sweep needs keel-perf JSON from --sweep rate_iops=...")
    series = {}
    for point in sweep["points"]:
        for job in point["jobs"]:
            k = job["keel"]
            s = series.setdefault(k["path"], {"rate": [], "cpu": [], "iops": []})
            s["rate"].append(k["rate_iops"][0])  # the cap per direction: reads here
            s["cpu"].append(k["host_cpu_ns_per_io"])
            s["iops"].append(k["iops"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for path, s in sorted(series.items()):
        ax.plot(s["rate"], s["cpu"], marker="o", label=f"path={path}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered IOPS (rate_iops)")
    ax.set_ylabel("host CPU ns per IO")
    ax.set_title("keel-perf: host CPU per IO against the offered rate")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    name = os.path.join(out, "cpu_vs_rate.png")
    fig.savefig(name, dpi=110)
    plt.close(fig)
    print(name)


def latency(doc, out):
    jobs = doc.get("jobs")
    if not jobs:
        sys.exit("keel_plots: --latency needs keel-perf JSON of a single run (--json)")
    labels = ["p50", "p90", "p99", "p99.9"]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(jobs)
    for i, job in enumerate(jobs):
        k = job.get("keel", job)  # keel's figures: in "keel" since fio's layout
        lat = k["lat_ns_all"]
        ys = [lat[k] / 1000.0 for k in labels]
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, ys, width=width, label=f"path={k['path']}")
    ax.set_xticks([x + width * (len(jobs) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.set_ylabel("latency (us)")
    ax.set_title("keel-perf: latency percentiles per path")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    name = os.path.join(out, "latency_percentiles.png")
    fig.savefig(name, dpi=110)
    plt.close(fig)
    print(name)


def gbench(docs, counter, out, name):
    names, values = [], []
    for doc in docs:
        for b in doc.get("benchmarks", []):
            if counter in b and b.get("run_type", "iteration") != "aggregate":
                names.append(b["name"].replace("/real_time", "").replace("/min_time:", " t:"))
                values.append(b[counter])
    if not names:
        sys.exit(f"keel_plots: no benchmark in the --gbench files has a '{counter}' counter")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    ax.barh(range(len(names)), values)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(counter)
    ax.set_title(f"{counter} per benchmark case")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the PNG files")
    ap.add_argument("--qd-sweep", help="keel-perf JSON of --sweep iodepth=...")
    ap.add_argument("--rate-sweep", help="keel-perf JSON of --sweep rate_iops=...")
    ap.add_argument("--latency", help="keel-perf JSON of one run")
    ap.add_argument("--gbench", nargs="*", default=[], help="Google Benchmark JSON files")
    ap.add_argument("--counter", action="append", default=[],
                    help="Google Benchmark counter to plot (default: cycles_per_cmd)")
    args = ap.parse_args()
    if not (args.qd_sweep or args.rate_sweep or args.latency or args.gbench):
        ap.error("nothing to plot: give --qd-sweep, --rate-sweep, --latency or --gbench")
    os.makedirs(args.out, exist_ok=True)
    if args.qd_sweep:
        qd_sweep(load(args.qd_sweep), args.out)
    if args.rate_sweep:
        rate_sweep(load(args.rate_sweep), args.out)
    if args.latency:
        latency(load(args.latency), args.out)
    if args.gbench:
        docs = [load(p) for p in args.gbench]
        for counter in args.counter or ["cycles_per_cmd"]:
            name = "cycles_per_cmd.png" if counter == "cycles_per_cmd" else f"gbench_{counter}.png"
            gbench(docs, counter, args.out, name)


if __name__ == "__main__":
    main()
