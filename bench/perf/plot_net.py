#!/usr/bin/python3
"""Plot keel-perf-net JSON: the VF path against the software fallback, per frame size.

  plot_net.py --out DIR NET.json     net_vf_vs_fallback.png: frames/s, Gbit/s, host CPU per frame
                                     and round-trip p50/p99 against frame size, per path
  plot_net.py --check NET.json       checks the JSON (both paths present where asked, frames
                                     received, round trips done); exit 1 if not. No matplotlib.

Runs with Debian's /usr/bin/python3 and python3-matplotlib (no display needed), as
tools/plots/keel_plots.py.
"""
import argparse
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"plot_net: cannot read {path}: {e}")


def check(doc):
    problems = []
    want = {"vf": ["vf"], "fallback": ["fallback"], "both": ["vf", "fallback"]}
    asked = want.get(doc.get("options", {}).get("path"), ["vf", "fallback"])
    points = doc.get("points", [])
    if not points:
        problems.append("no points")
    for pt in points:
        paths = [p["path"] for p in pt["paths"]]
        if paths != asked:
            problems.append(f"bs {pt['bs']}: paths {paths}, asked {asked}")
        for p in pt["paths"]:
            s, lat = p["stream"], p["latency"]
            if s["frames"] <= 0 or s["received"] <= 0:
                problems.append(f"{p['path']} bs {pt['bs']}: no frames received")
            if s["bad_frames"] != 0:
                problems.append(f"{p['path']} bs {pt['bs']}: {s['bad_frames']} bad frames")
            if lat["round_trips"] <= 0:
                problems.append(f"{p['path']} bs {pt['bs']}: no round trips")
            if s["host_cpu_ns_per_frame"] <= 0:
                problems.append(f"{p['path']} bs {pt['bs']}: no host CPU counted")
        if len(asked) == 2 and "ratios" not in pt:
            problems.append(f"bs {pt['bs']}: no ratios")
    for p in problems:
        print(f"plot_net: {p}", file=sys.stderr)
    return not problems


def plot(doc, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_net: needs python3-matplotlib (apt-get install python3-matplotlib) "
                 "and Debian's /usr/bin/python3")
    series = {}
    for pt in doc["points"]:
        for p in pt["paths"]:
            s = series.setdefault(p["path"], {k: [] for k in
                                              ("bs", "fps", "gbps", "cpu", "p50", "p99")})
            s["bs"].append(pt["bs"])
            s["fps"].append(p["stream"]["frames_per_s"] / 1e3)
            s["gbps"].append(p["stream"]["gbit_per_s"])
            s["cpu"].append(p["stream"]["host_cpu_ns_per_frame"])
            s["p50"].append(p["latency"]["rtt_ns"]["p50"] / 1e3)
            s["p99"].append(p["latency"]["rtt_ns"]["p99"] / 1e3)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = (("fps", "k frames/s (A -> B stream)"), ("gbps", "Gbit/s (frame bytes)"),
              ("cpu", "host CPU ns per frame"), ("rtt", "round trip us (ping-pong)"))
    colors = {"vf": "tab:blue", "fallback": "tab:orange"}
    for ax, (key, label) in zip(axes.flat, panels):
        for path, s in sorted(series.items(), key=lambda kv: kv[0] != "vf"):
            c = colors.get(path)
            if key == "rtt":
                ax.plot(s["bs"], s["p50"], marker="o", color=c, label=f"{path} p50")
                ax.plot(s["bs"], s["p99"], marker="^", linestyle="--", color=c,
                        label=f"{path} p99")
            else:
                ax.plot(s["bs"], s[key], marker="o", color=c, label=path)
        ax.set_xlabel("frame bytes")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"keel-perf-net: NIC VF path against the software switch ({doc.get('time', '')})")
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "net_vf_vs_fallback.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="keel-perf-net --json output")
    ap.add_argument("--out", help="directory for the PNG")
    ap.add_argument("--check", action="store_true", help="check the JSON only")
    a = ap.parse_args()
    doc = load(a.json)
    if a.check:
        sys.exit(0 if check(doc) else 1)
    if not a.out:
        sys.exit("plot_net: --out DIR (or --check)")
    plot(doc, a.out)


if __name__ == "__main__":
    main()
