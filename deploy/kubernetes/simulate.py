#!/usr/bin/env python3
"""Replays a day of uploads through an overlay's KEDA scaling rules (docs/operations.md).

    .vtx/py/bin/python deploy/kubernetes/simulate.py [--overlay small|large] [--png FILE]

Reads the rendered overlay (`kubectl kustomize`): each worker class's ScaledObject (queue-length
target, minimum and maximum replicas, the evening floor and its time zone, the scaling
behaviour). Uploads arrive on a diurnal curve with the evening peak (20:00-24:00 local, 25% above
daytime) and a viral burst that quadruples traffic within 30 minutes; each becomes the tasks vtx
makes of it, which the simulated workers serve at the measured per-worker costs (COSTS below,
measured with `vtx transcode`, docs/operations.md). KEDA polls every `pollingInterval`; the HPA
applies its behaviour; a new pod serves after POD_START seconds.

Prints, per hour: uploads per minute, replicas per class, the fast queue's wait (p50/p95) and
the publish latency (upload complete -> first tier live, p50/p95), and the high tier's; writes a
PNG of the same over the day.
"""

import argparse
import heapq
import math
import os
import subprocess
import sys
from collections import deque

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = os.path.join(HERE, "..", "..", ".vtx")

# Seconds of one worker pod (concurrency 1) per second of video, per class: CPU seconds per
# video second measured with `vtx transcode` (release build) on the shared 720p clip, 4-rung
# ladder (fast 1.06, high 3.58, extreme 62; docs/operations.md "Sizing"), over the pod's CPU
# request (2, 2, 4 cores). A merge remuxes: a fixed part plus a little per video second.
COSTS = {
    "fast": 1.06 / 2,
    "high": 3.58 / 2,
    "extreme": 62.0 / 4,
}
MERGE_FIXED_S, MERGE_PER_VIDEO_S = 1.5, 0.02
# Seconds of video per message: a live-ingest chunk (fast), a slice (high, extreme).
MESSAGE_VIDEO_S = {"fast": 4.0, "high": 10.0, "extreme": 10.0}
# Seconds from a replica being asked for to its pod consuming (scheduling on a node with room,
# image already on the node, `vtx worker` ready in about a second): an assumption, not measured
# on a cluster; node autoscaling, when a node must be added, takes minutes more.
POD_START = 30.0
# Uploads per day in each overlay's sizing, and the share of videos the hotness tracker sends
# to the extreme tier.
UPLOADS_PER_DAY = {"small": 2_000, "large": 200_000}
EXTREME_SHARE = 0.01
# Video lengths: (seconds, share).
LENGTHS = [(15.0, 0.6), (60.0, 0.3), (300.0, 0.1)]
DT = 1.0  # seconds per step
BURST_AT_H = 14.0  # local time the viral event starts


def render(overlay):
    kubectl = os.path.join(STATE, "bin", "kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", os.path.join(HERE, "overlays", overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class Rule:
    """One class's ScaledObject."""

    def __init__(self, so):
        spec = so["spec"]
        self.name = so["metadata"]["name"].removeprefix("vtx-worker-")
        self.min = spec.get("minReplicaCount", 0)
        self.max = spec.get("maxReplicaCount", 100)
        self.poll = spec.get("pollingInterval", 30)
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        up = behavior.get("scaleUp", {}).get("policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}])[0]
        down = behavior.get("scaleDown", {})
        self.up_percent, self.up_period = up["value"], up["periodSeconds"]
        self.down_window = down.get("stabilizationWindowSeconds", 300)
        dp = down.get("policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}])[0]
        self.down_percent, self.down_period = dp["value"], dp["periodSeconds"]
        self.target = None
        self.floor, self.floor_hours = 0, None
        for t in spec["triggers"]:
            if t["type"] == "rabbitmq":
                self.target = float(t["metadata"]["value"])
            elif t["type"] == "cron":
                m = t["metadata"]
                self.floor = int(m["desiredReplicas"])
                start = int(m["start"].split()[1])
                end = int(m["end"].split()[1]) or 24
                self.floor_hours = (start, end)


class Pool:
    """A class's workers and its queue: messages that have arrived wait in FIFO order (what
    KEDA counts); those due later (a merge after its encode) wait in `due` until then."""

    def __init__(self, rule):
        self.rule = rule
        self.queue = deque()  # [arrival, messages left, seconds each, tag]
        self.waiting = 0
        self.due = []  # heap of (arrival, seq, messages, seconds each, tag)
        self.seq = 0
        self.workers = [0.0] * rule.min  # heap: when each ready worker is next free
        self.starting = []  # when each pod asked for becomes ready
        self.desired_history = deque()
        self.last_poll = self.last_up = self.last_down = -1e9
        self.waits = []  # (start time, wait) of every message

    def add(self, arrival, n, each, tag):
        self.seq += 1
        heapq.heappush(self.due, (arrival, self.seq, n, each, tag))

    def scale(self, now, hour):
        r = self.rule
        while self.starting and self.starting[0] <= now:
            heapq.heappop(self.starting)
            heapq.heappush(self.workers, now)
        if now - self.last_poll < r.poll:
            return
        self.last_poll = now
        desired = math.ceil(self.waiting / r.target) if r.target else 0
        if r.floor_hours and r.floor_hours[0] <= hour < r.floor_hours[1]:
            desired = max(desired, r.floor)
        desired = max(r.min, min(r.max, desired))
        if r.min == 0 and self.waiting > 0:
            desired = max(desired, 1)
        self.desired_history.append((now, desired))
        while self.desired_history[0][0] < now - r.down_window:
            self.desired_history.popleft()
        total = len(self.workers) + len(self.starting)
        if desired > total:
            if now - self.last_up >= r.up_period:
                add = min(desired - total, max(1, math.ceil(total * r.up_percent / 100)))
                for _ in range(add):
                    heapq.heappush(self.starting, now + POD_START)
                self.last_up = now
            return
        # Down to the highest recommendation of the stabilization window; a pod that goes
        # drains: it finishes the task in hand (its completion is already scheduled).
        keep = max(d for _, d in self.desired_history)
        if keep < total and now - self.last_down >= r.down_period:
            remove = min(total - keep, max(1, math.floor(total * r.down_percent / 100)))
            while remove and self.starting:
                self.starting.pop()
                remove -= 1
            self.workers = sorted(self.workers)[: max(0, len(self.workers) - remove)]
            heapq.heapify(self.workers)
            self.last_down = now

    def serve(self, now, step, finished):
        """Runs the messages that start before `now + step`; `finished(tag, t)` when a batch's
        last message ends at t."""
        while self.due and self.due[0][0] <= now:
            arrival, _, n, each, tag = heapq.heappop(self.due)
            self.queue.append([arrival, n, each, tag])
            self.waiting += n
        end = now + step
        while self.queue and self.workers and self.workers[0] < end:
            free = heapq.heappop(self.workers)
            batch = self.queue[0]
            start = max(free, batch[0], now)
            finish = start + batch[2]
            self.waits.append((start, start - batch[0]))
            batch[1] -= 1
            self.waiting -= 1
            if batch[1] == 0:
                self.queue.popleft()
                finished(batch[3], finish)
            heapq.heappush(self.workers, finish)


def arrivals_per_minute(hour, per_day, burst):
    """Uploads per minute at local `hour`: night low, day flat, evening peak +25%, and the
    viral burst (4x within 30 minutes, an hour at 4x, an hour back down)."""
    if hour < 6:
        shape = 0.35
    elif hour < 8:
        shape = 0.35 + 0.65 * (hour - 6) / 2
    elif hour < 20:
        shape = 1.0
    else:
        shape = 1.25
    # Integral of shape over the day: 6*0.35 + 2*0.675 + 12*1 + 4*1.25 = 20.45 hours.
    base = per_day / (20.45 * 60)
    mult = 1.0
    if burst:
        t = hour - BURST_AT_H
        if 0 <= t < 0.5:
            mult = 1 + 3 * t / 0.5
        elif 0.5 <= t < 1.5:
            mult = 4.0
        elif 1.5 <= t < 2.5:
            mult = 4 - 3 * (t - 1.5)
    return base * shape * mult


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def simulate(overlay, burst=True):
    docs = render(overlay)
    rules = {}
    for d in docs:
        if d["kind"] == "ScaledObject":
            r = Rule(d)
            rules[r.name] = r
    pools = {name: Pool(r) for name, r in rules.items()}
    per_day = UPLOADS_PER_DAY[overlay]
    published = []  # (time, latency) fast tier live
    high_live = []  # (time, latency) high tier live
    carry = 0.0
    video_id = 0
    videos = {}  # id -> [arrival, length, stage]

    def finished(tag, t):
        if tag is None:
            return
        vid, stage = tag
        arrival, length = videos[vid]
        if stage in ("fast", "high"):
            merge = MERGE_FIXED_S + MERGE_PER_VIDEO_S * length
            pools["merge"].add(t, 1, merge, (vid, "merge-" + stage))
        elif stage == "merge-fast":
            published.append((t, t - arrival))
            n = math.ceil(length / MESSAGE_VIDEO_S["high"])
            each = COSTS["high"] * min(length, MESSAGE_VIDEO_S["high"])
            pools["high"].add(t, n, each, (vid, "high"))
        elif stage == "merge-high":
            high_live.append((t, t - arrival))
            del videos[vid]

    steps = int(24 * 3600 / DT)
    series = {k: [] for k in ["hour", "per_min"] + [f"replicas_{c}" for c in pools]}
    for step in range(steps):
        now = step * DT
        hour = now / 3600
        rate = arrivals_per_minute(hour, per_day, burst)
        carry += rate * DT / 60
        n_new = int(carry)
        carry -= n_new
        for i in range(n_new):
            # Lengths in their shares, round-robin (deterministic).
            video_id += 1
            u = (video_id * 0.6180339887) % 1.0
            acc = 0.0
            for length, share in LENGTHS:
                acc += share
                if u < acc:
                    break
            videos[video_id] = (now, length)
            n = math.ceil(length / MESSAGE_VIDEO_S["fast"])
            each = COSTS["fast"] * min(length, MESSAGE_VIDEO_S["fast"])
            pools["fast"].add(now, n, each, (video_id, "fast"))
            # A hot video: its extreme encode is queued by the tracker within the hour.
            if (video_id * 0.7548776662) % 1.0 < EXTREME_SHARE:
                ne = math.ceil(length / MESSAGE_VIDEO_S["extreme"])
                each_e = COSTS["extreme"] * min(length, MESSAGE_VIDEO_S["extreme"])
                pools["extreme"].add(now + 3600, ne, each_e, None)
        for pool in pools.values():
            pool.scale(now, hour)
            pool.serve(now, DT, finished)
        if step % int(60 / DT) == 0:
            series["hour"].append(hour)
            series["per_min"].append(rate)
            for name, pool in pools.items():
                series[f"replicas_{name}"].append(len(pool.workers))
    return pools, published, high_live, series


def table(overlay, pools, published, high_live, series):
    print(f"### {overlay} overlay: {UPLOADS_PER_DAY[overlay]:,} uploads a day, burst at {BURST_AT_H:.0f}:00")
    print()
    classes = list(pools)
    head = ["hour", "uploads/min"] + [f"{c} pods mean/max" for c in classes]
    head += ["fast wait p50/p95 s", "publish p50/p95 s", "high live p50/p95 s"]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join(["---:"] * len(head)) + " |")
    for h in range(24):
        lo, hi = h * 3600, (h + 1) * 3600
        idx = [i for i, x in enumerate(series["hour"]) if h <= x < h + 1]
        per_min = sum(series["per_min"][i] for i in idx) / max(1, len(idx))
        reps = [
            f"{sum(series[f'replicas_{c}'][i] for i in idx) / len(idx):.1f} / "
            f"{max(series[f'replicas_{c}'][i] for i in idx)}"
            for c in classes
        ]
        waits = [w for t, w in pools["fast"].waits if lo <= t < hi]
        pub = [l for t, l in published if lo <= t < hi]
        hig = [l for t, l in high_live if lo <= t < hi]
        row = [f"{h:02d}", f"{per_min:.1f}"] + [str(r) for r in reps]
        row += [
            f"{pct(waits, .5):.0f} / {pct(waits, .95):.0f}",
            f"{pct(pub, .5):.0f} / {pct(pub, .95):.0f}",
            f"{pct(hig, .5):.0f} / {pct(hig, .95):.0f}",
        ]
        print("| " + " | ".join(row) + " |")
    all_pub = [l for _, l in published]
    print()
    print(
        f"Day: {len(all_pub):,} videos published; publish p50 {pct(all_pub, .5):.1f} s, "
        f"p95 {pct(all_pub, .95):.1f} s, max {max(all_pub):.1f} s."
    )
    print()


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(results), figsize=(7 * len(results), 10), sharex=True)
    for col, (overlay, (pools, published, high_live, series)) in enumerate(results.items()):
        ax = axes[0][col]
        ax.plot(series["hour"], series["per_min"], color="black")
        ax.set_title(f"{overlay}: uploads per minute")
        ax = axes[1][col]
        for c in pools:
            ax.step(series["hour"], series[f"replicas_{c}"], where="post", label=c)
        ax.set_title("worker pods per class")
        ax.legend()
        ax = axes[2][col]
        for name, data in [("publish (fast tier live)", published), ("high tier live", high_live)]:
            hours = sorted({int(t // 600) for t, _ in data})
            xs, p50, p95 = [], [], []
            for b in hours:
                vals = [l for t, l in data if int(t // 600) == b]
                xs.append(b / 6)
                p50.append(pct(vals, 0.5))
                p95.append(pct(vals, 0.95))
            ax.plot(xs, p50, label=f"{name} p50")
            ax.plot(xs, p95, linestyle="--", label=f"{name} p95")
        ax.set_yscale("log")
        ax.set_title("latency after upload complete, s (10-minute buckets)")
        ax.set_xlabel("hour of the day (local)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--overlay", action="append", choices=["small", "large"])
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    results = {}
    for overlay in args.overlay or ["small", "large"]:
        results[overlay] = simulate(overlay)
        table(overlay, *results[overlay])
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    sys.exit(main())
