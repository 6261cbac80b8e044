#!/usr/bin/python3
"""Side by side: the same guest and fio jobs on keel (VF path, then software fallback) and on
qemu-storage-daemon's vhost-user-blk export of the same kind of image.

For every backend and fio job it reports the backend process's host CPU time per IO
((utime+stime) from /proc/<pid>/stat over the fio run, all threads and child processes,
divided by fio's IO count; the schedstat figure is the same at nanosecond resolution) and
the guest's IOPS. Under TCG the guest's IOPS measure QEMU's CPU emulation, not the backend:
compare backends by CPU per IO.

  /usr/bin/python3 tests/guest/compare.py --build-dir build [--card model] [--markdown F]

Backends run one after another (one QEMU at a time). Exit 0 when every run passed its
verify, 1 otherwise, 77 when this machine cannot boot the guest.
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keelguest  # noqa: E402
import run_guest  # noqa: E402


def keel_fallback_flag(keel_bin, wanted):
    """The keel-vhost-blk option that serves the guest on the software path only."""
    text = run_guest.keel_help(keel_bin)
    for flag in ([wanted] if wanted else []) + ["--no-vf", "--fallback", "--path=fallback"]:
        if flag.split("=")[0] in text:
            return flag
    return None


def card_tids(cpu, card_re, rank):
    """Thread ids of the card itself (the model card's thread is hardware, not host cost).

    By name first (--card-threads); keel-vhost-blk names no thread yet, so failing that the
    thread created rank-th after the main thread (open_card starts the model card's thread
    before anything else in keel-vhost-blk). Returns (tids, how)."""
    if not cpu:
        return set(), None
    rx = re.compile(card_re)
    named = {tid for tid, comm, _ in cpu["by_tid"] if rx.search(comm)}
    if named:
        return named, "by name"
    tids = sorted(tid for tid, _, _ in cpu["by_tid"])
    if rank and len(tids) > rank:
        return {tids[rank]}, f"thread #{rank} after main"
    return set(), None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel-bin", default=None, help="default BUILD/apps/keel-vhost-blk")
    ap.add_argument("--card", default="model", choices=["model", "sim"])
    ap.add_argument("--fallback-flag", default=None,
                    help="keel-vhost-blk option for the software path (default: --no-vf)")
    ap.add_argument("--card-threads", default=r"^(keel-card|card)",
                    help="regex of thread names that are the card itself, reported apart")
    ap.add_argument("--card-thread-rank", type=int, default=1,
                    help="keel backends whose threads match no --card-threads name: the card "
                         "is the thread created this many after the main one (0: none)")
    ap.add_argument("--backends", default="keel-vf,keel-fallback,qsd")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds over all backends (interleaved); the table shows medians")
    run_guest.add_run_options(ap)
    ap.set_defaults(jobs="verify-write,randread,randwrite", runtime=10)
    ap.add_argument("--from-json", default=None,
                    help="no runs: print the table of an earlier --json file")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            print(render(json.load(f), args))
        return 0
    keel_bin = args.keel_bin or os.path.join(args.build_dir, "apps", "keel-vhost-blk")

    results = []
    failed = False
    skipped = set()
    plan = [name for _ in range(args.repeat) for name in args.backends.split(",")]
    for name in plan:
        if name in skipped:
            continue
        try:
            if name == "qsd":
                template = run_guest.qsd_template()
            elif name == "keel-vf":
                template = run_guest.keel_template(keel_bin, args.card)
            elif name == "keel-fallback":
                flag = keel_fallback_flag(keel_bin, args.fallback_flag)
                if flag is None:
                    raise keelguest.Skip(f"{keel_bin} --help names no option for the "
                                         f"software path (--no-vf)")
                template = run_guest.keel_template(keel_bin, args.card, flag)
            else:
                ap.error(f"unknown backend {name}")
            cfg = run_guest.config_from(args)
            cfg.workdir = None
            r = keelguest.run_guest(cfg, template, f"compare-{name}")
        except keelguest.Skip as e:
            print(f"{name}: SKIP: {e}", flush=True)
            if name == "qsd":
                return keelguest.SKIP_CODE
            skipped.add(name)
            continue
        except keelguest.Failure as e:
            print(f"{name}: FAIL: {e}", flush=True)
            failed = True
            continue
        for line in keelguest.summarize(r):
            print(line, flush=True)
        failed |= not r["ok"]
        r["name"] = name
        results.append(r)

    if not results:
        return 1
    table = render(results, args)
    print()
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 1 if failed else 0


def render(results, args):
    first = results[0]
    lines = [
        f"Guest: Debian kernel {first['kernel']}, {first['smp']} vCPU, accel "
        f"{first['accel']} ({first['accel_reason']}); vhost-user-blk-pci, "
        f"{first['queues']} queue(s); fio {first['bs']} iodepth {first['iodepth']} on "
        f"{first['fio_size']}, libaio, direct. Host: {os.cpu_count()} CPUs, load average "
        f"{first.get('loadavg', '?')} at the end.",
        "",
        "Median over runs (min-max in parentheses).",
        "",
        "| backend | fio job | runs | IOs | guest IOPS | backend CPU s | CPU ns/IO (stat) "
        "| CPU ns/IO (schedstat) | without the card thread ns/IO | verify |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    card_how = set()
    rows = {}  # (backend, job) -> list of per-run figures, in first-seen order
    for r in results:
        for job, info in r["jobs"].items():
            if "ios" not in info:
                continue
            cpu = info.get("backend_cpu") or {}
            excl = None
            if r["name"].startswith("keel") and cpu and info["ios"]:
                tids, how = card_tids(cpu, args.card_threads, args.card_thread_rank)
                if tids:
                    excl = sum(ns for tid, _, ns in cpu["by_tid"] if tid not in tids) / info["ios"]
                    card_how.add(how)
            rows.setdefault((r["name"], job), []).append({
                "ios": info["ios"], "iops": info["iops"], "cpu_s": cpu.get("cpu_s"),
                "stat": cpu.get("ns_per_io"), "sched": cpu.get("sched_ns_per_io"),
                "excl": excl, "ok": r["ok"]})

    def med(runs, key, fmt):
        vals = sorted(v[key] for v in runs if v[key] is not None)
        if not vals:
            return "-"
        m = statistics.median(vals)
        if len(vals) == 1:
            return fmt.format(m)
        return f"{fmt.format(m)} ({fmt.format(vals[0])}-{fmt.format(vals[-1])})"

    for (name, job), runs in rows.items():
        verify = "-"
        if job == "verify-write":
            verify = "pass" if all(v["ok"] for v in runs) else "FAIL"
        lines.append(
            f"| {name} | {job} | {len(runs)} | {med(runs, 'ios', '{:.0f}')} | "
            f"{med(runs, 'iops', '{:.0f}')} | {med(runs, 'cpu_s', '{:.2f}')} | "
            f"{med(runs, 'stat', '{:.0f}')} | {med(runs, 'sched', '{:.0f}')} | "
            f"{med(runs, 'excl', '{:.0f}')} | {verify} |")
    lines.append("")
    if card_how:
        lines.append(f"Card thread identified {', '.join(sorted(card_how))}.")
    lines.append("Threads of each backend over each job (tid name: schedstat ms; "
                 "* = the card):")
    for r in results:
        for job, info in r["jobs"].items():
            cpu = info.get("backend_cpu")
            if not cpu:
                continue
            tids = set()
            if r["name"].startswith("keel"):
                tids, _ = card_tids(cpu, args.card_threads, args.card_thread_rank)
            parts = ", ".join(f"{tid}{'*' if tid in tids else ''} {comm}: {ns / 1e6:.0f}"
                              for tid, comm, ns in cpu["by_tid"] if ns >= 1e6)
            lines.append(f"- {r['name']} {job} ({cpu['wall_s']:.1f} s): {parts or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
