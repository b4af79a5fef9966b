"""Fidelity benchmark at two levels: train a model on real captures, generate, repair, evaluate
against real traffic the model never saw, and read every number next to its floor.

    .venv/bin/python benchmarks/fidelity.py [--data ../shared/data/pcaps] [--work bench_out/fidelity]
        [--config small|tiny|compact] [--steps N] [--train-minutes M] [--count 12]
        [--mix uniform|train|packets]
        [--eval-count N]
        [--jobs N] [--seed 0] [--classes dns,ssh]
        [--levels in,unseen] [--threads 1] [--skip-train] [--max-packets-per-file N]
        [--priors | --no-priors] [--no-compliance] [--figures] [--restamped]

Levels (each a train and a test folder of ``<class>/*.pcap`` under ``--work/<level>/``):

* ``in`` (in distribution): every capture's packets are split by bidirectional flow (5-tuple);
  a flow's packets are never on both sides. Per capture, the flows are shuffled with a seed drawn
  from (--seed, class, file name) and half of them (an odd one out by a seeded coin) go to the
  training side A, the rest to the held-back side B. A capture dominated by one huge flow is split
  by flow all the same, so one side then holds most of its packets; a single-flow capture goes
  whole to the side its coin picks. Packets netdiff cannot parse (non-IP) travel together as
  one more "flow". Every packet keeps its bytes and timestamp (netdiff's own reader and writer).
* ``unseen`` (unseen captures): per class, about two thirds of the capture files (seeded shuffle)
  train, the rest test; a class with two files puts one on each side, a class with one file has
  that file's flows split as above (the output says so).

Per level: pcap2img the training side (netdiffusion layout, the config's height), train-base,
``--count`` images per class (``--mix train``: as many images in all, shared out in proportion
to the classes' packets on the training side, at least ``MIN_MIX_IMAGES`` each), img2pcap with
the training side's timing model (and, with ``--priors`` when img2pcap takes a ``priors=``
argument, a second set repaired with the class field priors written next to timing.json), then
``netdiff.evaluate`` of each generated set against the test side, with the training side as the
memorisation reference. The floor is the real training side evaluated the same way against the
test side: what a generator that reproduced its training data exactly would score on held-out
traffic. Beside it (``--windows``,
on by default) the training side cut into captures of the generated images' height: the flow
measures count flows per capture, so a generated capture of 128 packets cuts every longer flow
where a whole real capture does not; that column shows how much of a distance the cut alone
makes; with ``--restamped`` those windows again with their timestamps drawn by the timing
model, so the timing model's own share is told apart from the generator's structure. Next to
them, evaluate's
own calibration rows from the generated set's report: the column-marginal sampler (the naive
baseline) and real vs real (evaluate's A/B split of the test side). Sample spread
(netdiff.eval.spread) compares generated images of a class with each other, and the real
training images of that class with each other.

The pooled measures (every packet or flow of every class at once: packet C2ST, MI distance, flow
size-duration JSD...) depend on the class mix as much as on each class: the floor and the real
windows carry the training side's mix, a uniform ``--count`` per class another one. On the
unseen split of stop 33 the same generated packets scored an MI distance of 0.099 at the uniform
mix and 0.092 resampled to the training mix (floor 0.077); ``--mix train`` generates the mix the
floor has, so that the ratio to the floor reads the generator's dependencies, not the mix. Images
are not packets, though: a class of short captures ends its images early (in distribution at
1,024 rows tls_web's images held 65 packets each, BitTorrent's 977), so ``--mix packets`` counts
each image's packets from its drawn structure before sampling (``planned_packets``) and gives
every class its training share of as many packets as ``--count`` images a class would hold
(``packet_counts``).

Writes ``--work/results.json`` and ``--work/results.md`` (the printed markdown tables), and keeps
every intermediate folder (splits, images, model, generated images and pcaps, reports).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = {"in": "in distribution", "unseen": "unseen captures"}
MIXES = ("uniform", "train", "packets")
MIN_MIX_IMAGES = 2
MAX_MIX_IMAGES = 16         # x --count: a class whose images hold almost no packet stops there
GEN, PRIORS, FLOOR, MARGINAL, REAL = ("generated", "generated + class priors", "floor (real train vs test)",
                                      "column-marginal baseline", "real vs real (evaluate A/B)")
# The training side cut into captures of the generated images' height: what the floor becomes
# when whole flows are cut at the image's edge as every generated capture is (the flow measures
# count flows per capture), so the window's share of a distance is told apart from the model's.
WINDOWS = "real windows (train cut to image height)"
# The same windows with every timestamp drawn anew by the timing model repair uses (each gap for
# its packet's kind in the window's own flows), bytes and order kept: what the timing model alone
# costs the flow measures, apart from the structure the generator draws (--restamped).
RESTAMPED = "real windows re-stamped (timing model)"
REPORT_DIRS = {GEN: "generated", PRIORS: "generated_priors", FLOOR: "floor", WINDOWS: "real_windows",
               RESTAMPED: "real_windows_restamped"}
TRAIN_STAMP = "bench_train.json"     # written into the model folder: what it was trained on
DCR_UNITS = ("packets", "flows")      # generated pcaps hold 32-packet images; evaluate's 1024-row
#                                       "images" unit would compare them with whole training files


def parse_args(argv=None) -> argparse.Namespace:
    default_config = "small" if (ROOT / "configs" / "model" / "small.yaml").exists() else "tiny"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pcaps",
                   help="real captures as <class>/*.pcap (default: ../shared/data/pcaps)")
    p.add_argument("--work", type=Path, default=ROOT / "bench_out" / "fidelity",
                   help="folder for splits, images, models, reports and results (default: bench_out/fidelity)")
    p.add_argument("--config", default=default_config, help=f"model config (default: {default_config})")
    p.add_argument("--steps", type=int, help="training steps (default: the config's)")
    p.add_argument("--count", type=int, default=12, help="generated images per class (default: 12)")
    p.add_argument("--mix", choices=MIXES, default="uniform",
                   help="uniform: --count images of every class; train: --count times the classes in "
                        "all, each class's share its share of the training side's packets (the mix "
                        "of the floor and the real windows), at least two a class; packets: as many "
                        "generated packets in all as uniform would make, each class's share of them "
                        "its share of the training side's (images counted by their drawn structure)")
    p.add_argument("--eval-count", type=int, default=None,
                   help="repair and evaluate only the first N generated images of each class (default: all)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="stop training after this much wall time (train-base --max-minutes)")
    p.add_argument("--jobs", type=int, default=1, help="repair worker processes (default: 1)")
    p.add_argument("--windows", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the training side cut into captures of the image height (default: on)")
    p.add_argument("--restamped", action="store_true",
                   help="also score the real windows re-stamped by the timing model (needs --windows)")
    p.add_argument("--rows", type=int,
                   help="packets per generated image, a multiple of the config's height (default: the "
                        "config's height); flows can run across the windows of a taller image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw-seed", type=int, default=None,
                   help="seed of generation and repair only (default --seed): other draws of the "
                        "same model on the same split, for the run-to-run spread")
    p.add_argument("--classes", help="comma-separated subset of the classes under --data")
    p.add_argument("--levels", default="in,unseen", help="comma-separated: in, unseen (default: both)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenMP threads (default 1: on a shared 2-core machine 2 threads are "
                        "several times slower)")
    p.add_argument("--skip-train", action="store_true",
                   help="reuse the model already in --work/<level>/model (it must have been trained on the same split)")
    p.add_argument("--max-packets-per-file", type=int,
                   help="keep only the first N packets of every capture (to fit a CPU budget)")
    p.add_argument("--priors", action=argparse.BooleanOptionalAction, default=False,
                   help="also repair with the class field priors next to timing.json, when img2pcap takes "
                        "priors= (a 'generated + class priors' column)")
    p.add_argument("--no-compliance", dest="compliance", action="store_false",
                   help="skip netdiff validate inside evaluate (no validity row)")
    p.add_argument("--figures", action="store_true", help="let evaluate draw its figures (slower)")
    args = p.parse_args(argv)
    args.levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    bad = [x for x in args.levels if x not in LEVELS]
    if bad:
        p.error(f"--levels: unknown {', '.join(bad)} (choose from {', '.join(LEVELS)})")
    if args.count < 1 or args.threads < 1 or args.jobs < 1 or (args.eval_count is not None and args.eval_count < 1):
        p.error("--count, --eval-count, --jobs and --threads must be at least 1")
    if args.restamped and not args.windows:
        p.error("--restamped re-stamps the real windows: drop --no-windows")
    if args.mix != "uniform" and args.eval_count is not None:
        p.error(f"--eval-count keeps the first N images of every class, which undoes --mix {args.mix}")
    return args


def set_threads(n: int) -> None:
    """Before numpy or torch load: OpenMP/BLAS pools read these once, when they start."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def torch_threads(n: int, quiet: bool) -> None:
    import torch

    if quiet:       # weight-loading bars of diffusers / transformers, as the CLI does
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:        # the inter-op pool had already started
        pass


class Phases:
    """Wall time per phase, printed as each ends."""

    def __init__(self, level: str):
        self.level, self.seconds, self._t = level, {}, time.perf_counter()

    def done(self, name: str, note: str = "") -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 1)
        self._t = now
        print(f"[{self.level}] {name}: {self.seconds[name]:.1f} s{'  ' + note if note else ''}", flush=True)


# --- 1. splits ----------------------------------------------------------------------------------

def read_capped(path: Path, cap: int | None):
    """The whole capture (or its first ``cap`` packets) in one batch, its info and its full length."""
    import numpy as np

    from netdiff.io.pcap import read_capture

    batch, info = read_capture(path)
    total = len(batch)
    if cap is not None and total > cap:
        batch = batch.take(np.arange(cap))
    return batch, info, total


def flow_sides(batch, key: str, seed: int):
    """Row indices of the training side A and the held-back side B, whole flows on each side.

    Flows are bidirectional 5-tuples (netdiff.pipeline.conversions.flow_labels); packets netdiff cannot parse
    are one more unit. The shuffle's seed comes from (seed, key) so that every capture gets its
    own order and the split does not depend on which other files or classes are in the run."""
    import numpy as np

    from netdiff.bits.codec import encode
    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.pipeline.conversions import flow_labels

    _, parsed = encode(batch, NETDIFFUSION)
    ok = np.flatnonzero(parsed.reason == 0)
    unit = np.full(len(batch), -1, dtype=np.int64)
    unit[ok] = flow_labels(batch, parsed)
    units = np.unique(unit)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    order = rng.permutation(units)
    n_a = len(units) // 2 + (int(rng.integers(0, 2)) if len(units) % 2 else 0)
    in_a = np.isin(unit, order[:n_a])
    flows = lambda m: int(len(np.unique(unit[m & (unit >= 0)])))  # noqa: E731
    return np.flatnonzero(in_a), np.flatnonzero(~in_a), {"flows_a": flows(in_a), "flows_b": flows(~in_a)}


def write_rows(batch, idx, info, dest: Path) -> int:
    """The selected packets, bytes and timestamps untouched, at the source's timestamp precision."""
    from netdiff.io.pcap import write_pcap

    if len(idx) == 0:
        return 0
    write_pcap(dest, batch.take(idx), nanosecond=info.ts_precision == "ns")
    return len(idx)


def class_files(data: Path, classes: list[str]) -> dict[str, list[Path]]:
    from netdiff.pipeline.conversions import CAPTURE_SUFFIXES

    return {c: sorted(f for f in (data / c).iterdir() if f.suffix.lower() in CAPTURE_SUFFIXES)
            for c in classes}


def _side() -> dict:
    return {"files": [], "packets": 0, "flows": 0}


def split_by_flows(files: list[Path], cls: str, train: Path, test: Path, seed: int, cap, manifest: dict) -> None:
    """Every file's flows dealt between train and test (the in-distribution split)."""
    row = manifest["classes"].setdefault(cls, {"train": _side(), "test": _side()})
    for f in files:
        batch, info, total = read_capped(f, cap)
        if len(batch) < total:
            manifest["capped"].append(f"{cls}/{f.name}: first {len(batch)} of {total} packets")
        a, b, counts = flow_sides(batch, f"{cls}/{f.name}", seed)
        for side, idx, flows, folder in (("train", a, counts["flows_a"], train), ("test", b, counts["flows_b"], test)):
            if write_rows(batch, idx, info, folder / cls / f"{f.stem}.pcap"):
                row[side]["files"].append(f.name)
                row[side]["packets"] += int(len(idx))
                row[side]["flows"] += flows
        if len(a) == 0 or len(b) == 0:
            manifest["notes"].append(f"{cls}/{f.name}: one flow only, all {len(batch)} packets on the "
                                     f"{'train' if len(a) else 'test'} side")


def split_in_distribution(data: Path, classes: list[str], out: Path, seed: int, cap) -> dict:
    manifest = {"level": "in", "classes": {}, "notes": [], "capped": []}
    for cls, files in class_files(data, classes).items():
        split_by_flows(files, cls, out / "train", out / "test", seed, cap, manifest)
        manifest["classes"][cls]["how"] = "flows of every file"
    return manifest


def split_unseen(data: Path, classes: list[str], out: Path, seed: int, cap) -> dict:
    import numpy as np

    manifest = {"level": "unseen", "classes": {}, "notes": [], "capped": []}
    for cls, files in class_files(data, classes).items():
        if len(files) == 1:
            split_by_flows(files, cls, out / "train", out / "test", seed, cap, manifest)
            manifest["classes"][cls]["how"] = "one file: its flows split"
            manifest["notes"].append(f"{cls}: only one capture ({files[0].name}); its flows are split "
                                     "instead, so this class is in distribution at this level")
            continue
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        order = [files[i] for i in rng.permutation(len(files))]
        n_train = min(len(files) - 1, max(1, round(2 * len(files) / 3)))
        row = {"train": _side(), "test": _side(), "how": f"files {n_train}/{len(files) - n_train}"}
        for k, f in enumerate(order):
            side, folder = ("train", out / "train") if k < n_train else ("test", out / "test")
            batch, info, total = read_capped(f, cap)
            if len(batch) < total:
                manifest["capped"].append(f"{cls}/{f.name}: first {len(batch)} of {total} packets")
            _, _, counts = flow_sides(batch, f"{cls}/{f.name}", seed)
            if write_rows(batch, np.arange(len(batch)), info, folder / cls / f"{f.stem}.pcap"):
                row[side]["files"].append(f.name)
                row[side]["packets"] += len(batch)
                row[side]["flows"] += counts["flows_a"] + counts["flows_b"]
        manifest["classes"][cls] = row
    return manifest


def check_sides(manifest: dict) -> list[str]:
    """Classes left without training or test packets cannot be evaluated: drop them, say why."""
    empty = [c for c, r in manifest["classes"].items() if not r["train"]["packets"] or not r["test"]["packets"]]
    for c in empty:
        manifest["notes"].append(f"{c}: dropped, one side holds no packet")
    return [c for c in manifest["classes"] if c not in empty]


def folder_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.pcap")):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# --- 2. model, generation, repair ---------------------------------------------------------------

def train_or_reuse(images: Path, model: Path, train_dir: Path, args, tty: bool) -> dict:
    """Train a fresh model, or (--skip-train) check that the one there saw this very training set."""
    import netdiff

    stamp = {"train_sha256": folder_sha256(train_dir), "config": args.config, "seed": args.seed}
    if args.skip_train:
        try:
            saved = json.loads((model / TRAIN_STAMP).read_text())
        except (OSError, ValueError):
            raise SystemExit(f"--skip-train: no model trained by this benchmark in {model}")
        if saved.get("train_sha256") != stamp["train_sha256"]:
            raise SystemExit(f"--skip-train: the model in {model} was trained on another split (other "
                             "--classes, --seed or --max-packets-per-file?); run without --skip-train")
        if saved.get("config") != args.config or (args.steps is not None and saved.get("steps") != args.steps):
            raise SystemExit(f"--skip-train: the model in {model} is config {saved.get('config')!r}, "
                             f"{saved.get('steps')} steps; run without --skip-train")
        refit_layouts(images, model)
        return {**saved, "reused": True}
    # Never resume into an old model folder: a finished one would be trained further.
    shutil.rmtree(model, ignore_errors=True)
    result = netdiff.train_base(images, model, config=args.config, steps=args.steps, seed=args.seed,
                                progress=tty, max_minutes=args.train_minutes)
    stamp.update(steps=result.steps, notes=result.notes, final_loss=result.losses[-1] if result.losses else None,
                 seconds=round(result.seconds, 1), device=result.device)
    (model / TRAIN_STAMP).write_text(json.dumps(stamp, indent=1))
    return {**stamp, "reused": False}


def refit_layouts(images: Path, model: Path) -> None:
    """The structure stage (row layouts and flow links) is counted from the training images, not
    trained: a reused network gets it refitted with the current code, in seconds."""
    from netdiff.model.config import ModelConfig
    from netdiff.model.data import ImageDataset
    from netdiff.model.flow_chain import FlowChain
    from netdiff.model.layouts import LAYOUTS_FILE

    if not (model / LAYOUTS_FILE).is_file():
        return          # a Gaussian model has no structure stage
    doc = json.loads((model / "netdiff_model.json").read_text())
    cfg = ModelConfig.from_dict(doc["config"], source=str(model))
    FlowChain.fit_dataset(ImageDataset(images, cfg.image)).save(model)


def priors_file(images: Path) -> Path | None:
    """The class field-priors file pcap2img writes next to timing.json."""
    from netdiff.pipeline.conversions import PRIORS_FILE

    path = images / PRIORS_FILE
    return path if path.is_file() else None


_WORKER: dict = {}


def _repair_init(timing_path: Path, priors: Path | None, threads: int) -> None:
    """A repair worker: one thread, the timing model and priors read once."""
    set_threads(threads)
    from netdiff.packet_repair import FieldPriors, TimingModel

    _WORKER["timing"] = TimingModel.load(timing_path)
    _WORKER["extra"] = {"priors": FieldPriors.load(priors)} if priors is not None else {}


def _repair_one(png: Path, dest: Path, seed: int) -> str | None:
    import netdiff
    from netdiff.errors import NetdiffError

    try:
        netdiff.img2pcap(png, dest, seed=seed, timing=_WORKER["timing"], **_WORKER["extra"])
    except NetdiffError as e:
        return str(e)
    return None


def repair_all(gen_images: Path, out: Path, timing_path: Path, seed: int, priors: Path | None = None,
               jobs: int = 1, limit: int | None = None) -> dict:
    """Every generated PNG (or the first ``limit`` of each class) -> pcap under out/<class>/;
    images repair refuses are counted, not fatal. ``jobs`` > 1: that many worker processes (image
    k is repaired with seed + k whichever worker takes it, so the bytes do not depend on jobs)."""
    from concurrent.futures import ProcessPoolExecutor

    shutil.rmtree(out, ignore_errors=True)
    pngs = sorted(gen_images.rglob("*.png"))
    if limit is not None:
        per: dict[str, int] = {}
        kept = []
        for png in pngs:
            per[png.parent.name] = per.get(png.parent.name, 0) + 1
            if per[png.parent.name] <= limit:
                kept.append(png)
        pngs = kept
    tasks = [(png, out / png.parent.name / f"{png.stem}.pcap", seed + k) for k, png in enumerate(pngs)]
    if jobs > 1:
        import multiprocessing

        # spawned, not forked: the parent may hold a CUDA context, which a forked child must not inherit
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_repair_init,
                                 initargs=(timing_path, priors, 1)) as pool:
            errors = list(pool.map(_repair_one, *zip(*tasks), chunksize=4))
    else:
        _repair_init(timing_path, priors, int(os.environ.get("OMP_NUM_THREADS", "1")))
        errors = [_repair_one(*t) for t in tasks]
    failed = {str(t[0].relative_to(gen_images)): e for t, e in zip(tasks, errors) if e is not None}
    return {"pcaps": len(tasks) - len(failed), "failed": failed}


def cut_windows(train: Path, out: Path, rows: int) -> Path:
    """Every training capture as consecutive captures of ``rows`` packets (bytes and times kept)."""
    import numpy as np

    from netdiff.io.pcap import read_capture

    shutil.rmtree(out, ignore_errors=True)
    for f in sorted(train.rglob("*.pcap")):
        batch, info = read_capture(f)
        for k, lo in enumerate(range(0, len(batch), rows)):
            write_rows(batch, np.arange(lo, min(lo + rows, len(batch))), info,
                       out / f.parent.name / f"{f.stem}_{k:05d}.pcap")
    return out


def restamp(windows: Path, out: Path, timing_path: Path, seed: int) -> Path:
    """Every capture under ``windows`` with its timestamps drawn anew by the timing model at
    ``timing_path`` (the first packet keeps its time; ``TimingModel.arrival_ns`` over the
    capture's own flows, as repair draws them); bytes kept, packets written in time order."""
    import numpy as np

    from netdiff.bits.codec import encode, flow_sides
    from netdiff.bits.layout import NPRINT
    from netdiff.io.pcap import read_capture
    from netdiff.packet_repair.timing import TimingModel

    model = TimingModel.load(timing_path)
    shutil.rmtree(out, ignore_errors=True)
    for k, f in enumerate(sorted(windows.rglob("*.pcap"))):
        batch, info = read_capture(f)
        order = np.arange(len(batch))
        if len(batch) > 1:
            _, p = encode(batch, NPRINT)
            key, side = flow_sides(p)       # -1 for a packet not parsed: a gap of the class's own
            t0 = int(batch.ts_sec[0]) * 10 ** 9 + int(batch.ts_nsec[0])
            t = t0 + model.arrival_ns(key, side, f.parent.name, seed + k)
            batch.ts_sec, batch.ts_nsec = t // 10 ** 9, t % 10 ** 9
            order = np.lexsort((order, t))
        write_rows(batch, order, info, out / f.parent.name / f.name)
    return out


# --- 3. sample spread ---------------------------------------------------------------------------

def spreads(gen_images: Path, train_images: Path, classes: list[str], height: int, seed: int) -> dict:
    """Per class: spread of generated images and of real training images, both cut into windows
    of the model's height (a taller generated image is several windows).

    Real images: the full windows only (a file's last, shorter image is padding below its last
    packet, which would count as differing bits); all of them when a class has fewer than two."""
    from netdiff.bits.layout import NETDIFFUSION
    import numpy as np

    from netdiff.eval.spread import sample_spread
    from netdiff.image.codec import read_png_bits

    out = {}
    for cls in classes:
        gen = []
        for p in sorted((gen_images / cls).glob("*.png")):
            bits = read_png_bits(p)
            gen += np.split(bits, bits.shape[0] // height)
        real_all = [read_png_bits(p, width=NETDIFFUSION.width, height=height)
                    for p in sorted((train_images / cls).glob("*.png"))]
        full = [im for im in real_all if not (im == -1).all(axis=1).any()]
        real = full if len(full) >= 2 else real_all
        out[cls] = {"generated": sample_spread(gen, seed=seed), "real": sample_spread(real, seed=seed),
                    "real_windows": "full" if real is full else "all (fewer than two full)"}
    mean = {}
    for side in ("generated", "real"):
        vals = [v[side]["present"] for v in out.values() if v[side]["present"] is not None]
        mean[side] = sum(vals) / len(vals) if vals else None
    out["_mean"] = mean       # unweighted over classes
    return out


# --- 4. the numbers out of report.json ----------------------------------------------------------

def _get(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def validity(report: dict) -> dict:
    """Share of pcaps `netdiff validate` passes (tshark, replay, rules), overall and per class
    (the class is the pcap's folder)."""
    files = _get(report, "compliance", "files")
    if not files:
        return {"overall": None, "per_class": {}}
    per: dict[str, list[bool]] = {}
    for f in files:
        per.setdefault(Path(f["path"]).parent.name, []).append(bool(f.get("ok")))
    share = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"overall": share([x for xs in per.values() for x in xs]),
            "per_class": {c: share(xs) for c, xs in per.items()}}


DISTANCES = ("header-field JSD", "field MI distance", "flow size-duration JSD", "inter-arrival EMD (log10 s)")


def overall_metrics(section: dict, dcr_side: str = "synthetic") -> dict:
    """The headline numbers of a report, or of one of its calibration sections (same keys)."""
    m = {
        "packet C2ST AUC": _get(section, "c2st_auc", "overall"),
        "flow C2ST AUC": _get(section, "c2st_auc", "flows"),
        "TSTR macro-F1": _get(section, "tstr", "overall"),
        "header-field JSD": _get(section, "decoded_field_jsd", "overall"),
        "field MI distance": _get(section, "mutual_information_distance", "overall"),
        "flow size-duration JSD": _get(section, "mutual_information_distance", "flow_size_duration",
                                       "size_duration_jsd"),
        "inter-arrival EMD (log10 s)": _get(section, "fidelity", "overall", "inter_arrival", "emd_log10_s"),
    }
    for unit in DCR_UNITS:
        m[f"DCR median ({unit})"] = _get(section, "dcr", unit, dcr_side, "median")
        m[f"exact copy rate ({unit})"] = _get(section, "copy_rate", unit, dcr_side, "exact_copy_rate")
        m[f"near copy rate ({unit})"] = _get(section, "copy_rate", unit, dcr_side, "near_copy_rate")
    return m


def class_metrics(section: dict, cls: str) -> dict:
    return {
        "packet C2ST AUC": _get(section, "c2st_auc", "per_class", cls),
        "flow C2ST AUC": _get(section, "c2st_auc", "flows_per_class", cls),
        "TSTR F1": _get(section, "tstr", "per_class", cls),
        "header-field JSD": _get(section, "decoded_field_jsd", "per_class", cls),
        "field MI distance": _get(section, "mutual_information_distance", "per_class", cls),
        "flow size-duration JSD": _get(section, "mutual_information_distance", "flow_size_duration_per_class", cls),
        "inter-arrival EMD (log10 s)": _get(section, "fidelity", "per_class", cls, "inter_arrival", "emd_log10_s"),
    }


def level_table(reports: dict, spread: dict, classes: list[str]) -> dict:
    """{"overall": {metric: {column: value}}, "per_class": {class: {metric: {column: value}}}}."""
    gen = reports[GEN]
    cal = gen["calibration"]
    cols = {GEN: overall_metrics(gen)}
    if PRIORS in reports:
        cols[PRIORS] = overall_metrics(reports[PRIORS])
    # The floor's "synthetic" set is the training set itself, so its own DCR is 0 by construction;
    # the held-out real (test) records against the training set are the DCR floor.
    cols[FLOOR] = overall_metrics(reports[FLOOR], dcr_side="holdout")
    for name in (WINDOWS, RESTAMPED):
        if name in reports:
            cols[name] = overall_metrics(reports[name], dcr_side="holdout")
    cols[MARGINAL] = overall_metrics(cal["column_marginal"])
    cols[REAL] = overall_metrics(cal["real_vs_real"])
    # TSTR of real vs real is TRTR (trained on the test side's half A): its own row.
    cols[REAL]["TRTR macro-F1"] = cols[REAL].pop("TSTR macro-F1")
    cols[GEN]["sample spread"] = spread["_mean"]["generated"]
    if PRIORS in cols:
        cols[PRIORS]["sample spread"] = spread["_mean"]["generated"]   # same images, other repair
    cols[FLOOR]["sample spread"] = spread["_mean"]["real"]
    for name in (GEN, PRIORS, FLOOR):
        if name in reports:
            cols[name]["validity (pcaps ok)"] = validity(reports[name])["overall"]
    order = list(cols[GEN]) + ["TRTR macro-F1"]
    overall = {m: {c: v[m] for c, v in cols.items() if m in v} for m in order}
    for m in DISTANCES:
        g, f = overall[m].get(GEN), overall[m].get(FLOOR)
        overall[m]["generated / floor"] = g / f if g is not None and f not in (None, 0) else None
        w = overall[m].get(WINDOWS)
        if WINDOWS in cols:
            overall[m]["generated / real windows"] = g / w if g is not None and w not in (None, 0) else None

    per_class = {}
    for cls in classes:
        row = {name: class_metrics(reports[name], cls) for name in (GEN, PRIORS, FLOOR) if name in reports}
        row[REAL] = {"TRTR F1": _get(gen, "trtr", "per_class", cls)}
        row[GEN]["sample spread"] = _get(spread, cls, "generated", "present")
        row[FLOOR]["sample spread"] = _get(spread, cls, "real", "present")
        for name in (GEN, PRIORS, FLOOR):
            if name in reports:
                row[name]["validity (pcaps ok)"] = validity(reports[name])["per_class"].get(cls)
        metrics = list(row[GEN]) + ["TRTR F1"]
        per_class[cls] = {m: {c: v[m] for c, v in row.items() if m in v} for m in metrics}
    return {"overall": overall, "per_class": per_class}


# --- 5. printing --------------------------------------------------------------------------------

def fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.1e}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"
    return str(x)


def markdown_level(level: str, res: dict) -> str:
    table = res["table"]
    cols = [c for c in (GEN, PRIORS, FLOOR, WINDOWS, RESTAMPED, MARGINAL, REAL, "generated / floor",
                        "generated / real windows")
            if any(c in v for v in table["overall"].values())]
    lines = [f"### {LEVELS[level]} (`{level}`)", "",
             f"config {res['model']['config']}, {res['model'].get('steps')} steps"
             f"{' in ' + str(res['model']['seconds']) + ' s on ' + str(res['model'].get('device')) if res['model'].get('seconds') else ''}, "
             + (f"{res['count']} images of {res.get('rows', '?')} packets per class"
                if res.get("mix", "uniform") == "uniform" else
                f"images of {res.get('rows', '?')} packets, {mix_text(res['counts'])}")
             + f"{' (' + format(res['images_per_s'], '.2f') + ' images/s on ' + str(res.get('generate_device')) + ')' if res.get('images_per_s') else ''}"
             f"{', the first ' + str(res['evaluated_per_class']) + ' per class repaired and evaluated' if res.get('evaluated_per_class', res['count']) < res['count'] else ''}"
             f", seed {res['seed']}; test side {res['packets']['test']} packets, training side "
             f"{res['packets']['train']} packets", "",
             "| measure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m, row in table["overall"].items():
        lines.append(f"| {m} | " + " | ".join(fmt(row[c]) if c in row else "" for c in cols) + " |")
    lines += ["", "Sample spread = mean share of differing present bits between two images of a class "
              "(generated vs generated; floor column: real training image vs real training image). "
              "DCR / copy rates: floor = held-out real (test) records against the training set; "
              "column marginal = sampler vs the test side's half A (evaluate's calibration).", ""]
    # Per class: the measure's generated value, then (+ priors), then the floor.
    names = [c for c in (GEN, PRIORS, FLOOR) if c in res["reports"]]
    short = {GEN: "gen", PRIORS: "priors", FLOOR: "floor"}
    metrics = [m for m in next(iter(table["per_class"].values()), {}) if m != "TRTR F1"]
    lines += [f"Per class ({' / '.join(short[n] for n in names)}; TSTR F1 also / TRTR; "
              "spread: generated / real training):", "",
              "| class | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for cls, row in table["per_class"].items():
        cells = []
        for m in metrics:
            vals = [fmt(row[m].get(n)) for n in names if n in row[m]]
            if m == "TSTR F1":
                vals.append(fmt(row["TRTR F1"].get(REAL)))
            cells.append(" / ".join(vals))
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines += ["", "Split (files / packets / flows):", "", "| class | how | train | test |", "|---|---|---|---|"]
    for cls, r in res["split"]["classes"].items():
        side = lambda s: f"{len(r[s]['files'])} / {r[s]['packets']} / {r[s]['flows']}"  # noqa: E731
        lines.append(f"| {cls} | {r['how']} | {side('train')} | {side('test')} |")
    notes = res["split"]["notes"] + res["split"]["capped"] + res["notes"]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["timing_s"].items()), ""]
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------

def image_counts(train_packets: dict[str, int], count: int, mix: str) -> dict[str, int]:
    """Generated images per class: ``count`` each, or (mix "train") ``count`` times the classes
    in all, shared out by the classes' training packets (largest remainders), at least
    MIN_MIX_IMAGES each (two images are the fewest the sample spread compares)."""
    import numpy as np

    classes = sorted(train_packets)
    if mix == "uniform":
        return {c: count for c in classes}
    total = count * len(classes)
    share = np.array([train_packets[c] for c in classes], dtype=np.float64)
    share = share / share.sum() if share.sum() > 0 else np.full(len(classes), 1.0 / len(classes))
    spare = total - MIN_MIX_IMAGES * len(classes)
    if spare <= 0:
        return {c: MIN_MIX_IMAGES for c in classes}
    want = share * total
    extra = np.maximum(want - MIN_MIX_IMAGES, 0)
    extra = extra / extra.sum() * spare if extra.sum() > 0 else np.full(len(classes), spare / len(classes))
    n = np.floor(extra).astype(int)
    for j in np.argsort(-(extra - n), kind="stable")[:spare - int(n.sum())]:
        n[j] += 1
    return {c: MIN_MIX_IMAGES + int(k) for c, k in zip(classes, n)}


def packet_counts(train_packets: dict[str, int], count: int, planned) -> dict[str, int]:
    """Generated images per class (mix "packets"): the packets ``count`` images of every class
    would hold, shared out by the classes' training packets; a class takes images (seeds in
    order) until its planned packets reach its share, at least MIN_MIX_IMAGES. ``planned(cls,
    ks)``: the packets images ks of the class will hold, asked ``count`` at a time
    (netdiff.model.generate.planned_packets, which loads the structure stage once a call).
    Images are not packets: a class of short captures ends its images early (tls_web's 1,024-row
    images held 65 packets each in stop 42's in-distribution run, BitTorrent's 977), so equal
    image counts gave the classes other shares of packets and flows than the training side's."""
    import numpy as np

    classes = sorted(train_packets)
    held = {c: list(planned(c, range(count))) for c in classes}
    budget = sum(sum(v) for v in held.values())
    share = np.array([train_packets[c] for c in classes], dtype=np.float64)
    share = share / share.sum() if share.sum() > 0 else np.full(len(classes), 1.0 / len(classes))
    out = {}
    for c, sh in zip(classes, share):
        got = held[c]
        while len(got) < MAX_MIX_IMAGES * count and (len(got) < MIN_MIX_IMAGES or sum(got) < sh * budget):
            got += planned(c, range(len(got), len(got) + count))
        n = max(MIN_MIX_IMAGES, int(np.searchsorted(np.cumsum(got), sh * budget)) + 1)
        out[c] = min(n, len(got))
    return out


def mix_text(counts: dict[str, int]) -> str:
    """'120 at the training mix (bittorrent 8, dns 16, ...)'."""
    return f"{sum(counts.values())} at the training mix ({', '.join(f'{c} {n}' for c, n in counts.items())})"


def run_level(level: str, classes: list[str], args, tty: bool) -> dict:
    import netdiff
    from netdiff.bits.layout import named_layout
    from netdiff.pipeline.conversions import TIMING_FILE
    from netdiff.model.config import load_config
    work = args.work / level
    phases = Phases(level)
    notes: list[str] = []

    # 1. Train/test split, written as <class>/*.pcap folders.
    for sub in ("train", "test"):
        shutil.rmtree(work / sub, ignore_errors=True)
    split = (split_in_distribution if level == "in" else split_unseen)(
        args.data, classes, work, args.seed, args.max_packets_per_file)
    (work / "split.json").parent.mkdir(parents=True, exist_ok=True)
    (work / "split.json").write_text(json.dumps(split, indent=1))
    kept = check_sides(split)
    if len(kept) < len(classes):
        for c in set(classes) - set(kept):
            for sub in ("train", "test"):
                shutil.rmtree(work / sub / c, ignore_errors=True)
    packets = {s: sum(split["classes"][c][s]["packets"] for c in kept) for s in ("train", "test")}
    phases.done("split", f"train {packets['train']} packets, test {packets['test']} packets"
                + (f"; capped {len(split['capped'])} files" if split["capped"] else ""))
    for n in split["capped"] + split["notes"]:
        print(f"[{level}]   {n}")

    # 2. Training images at the model's height, with the timing model next to them.
    height = load_config(args.config).image.height
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    conv = netdiff.pcap2img(work / "train", images, layout=named_layout("netdiffusion", height=height))
    notes += conv.errors
    phases.done("pcap2img", f"{conv.images} images of {height} rows")

    # 3. Model.
    model = work / "model"
    trained = train_or_reuse(images, model, work / "train", args, tty)
    notes += trained.get("notes") or []
    phases.done("train", "reused" if trained["reused"] else
                f"{trained.get('steps')} steps, final loss {fmt(trained.get('final_loss'))}")

    # 4. Generated images per class.
    draw = args.seed if args.draw_seed is None else args.draw_seed
    gen_images = work / "generated" / "images"
    shutil.rmtree(gen_images, ignore_errors=True)
    train_packets = {c: split["classes"][c]["train"]["packets"] for c in kept}
    if args.mix == "packets":
        from netdiff.model.generate import planned_packets

        counts = packet_counts(train_packets, args.count,
                               lambda c, ks: planned_packets(model, c, [draw + k for k in ks], args.rows))
    else:
        counts = image_counts(train_packets, args.count, args.mix)
    t0 = time.perf_counter()
    for cls in kept:
        made = netdiff.generate(model, cls, counts[cls], draw, output=gen_images / cls, progress=False,
                                height=args.rows)
    gen_s = time.perf_counter() - t0
    rate = sum(counts.values()) / gen_s
    made_what = f"{args.count} x {len(kept)} classes" if args.mix == "uniform" else mix_text(counts)
    phases.done("generate", f"{made_what}, {args.rows or height} packets each, "
                f"{rate:.2f} images/s on {made.device} (model loads included)")

    # 5. Repair into pcaps with the training side's timing (and class priors when asked).
    timing = images / TIMING_FILE
    pcaps = {GEN: work / "generated" / "pcaps"}
    rep = dict(jobs=args.jobs, limit=args.eval_count)
    repairs = {GEN: repair_all(gen_images, pcaps[GEN], timing, draw, **rep)}
    if args.priors:
        prior = priors_file(images)
        if prior is None:
            notes.append(f"--priors: pcap2img wrote no field priors next to {TIMING_FILE}; row left out")
        else:
            pcaps[PRIORS] = work / "generated" / "pcaps_priors"
            repairs[PRIORS] = repair_all(gen_images, pcaps[PRIORS], timing, draw, priors=prior, **rep)
    for name, r in repairs.items():
        if r["failed"]:
            notes.append(f"{name}: {len(r['failed'])} images not repaired (first: "
                         f"{next(iter(r['failed'].items()))})")
    phases.done("repair", ", ".join(f"{n}: {r['pcaps']} pcaps" for n, r in repairs.items()))

    # 6. Evaluate every candidate against the held-back test side; the floor is the training side.
    reports = {}
    # generated, floor, then priors: a run cut short by its time limit keeps the pair that matters
    candidates = {GEN: pcaps[GEN], FLOOR: work / "train", **({PRIORS: pcaps[PRIORS]} if PRIORS in pcaps else {})}
    if args.windows:
        candidates[WINDOWS] = cut_windows(work / "train", work / "real_windows", args.rows or height)
        if args.restamped:
            candidates[RESTAMPED] = restamp(candidates[WINDOWS], work / "real_windows_restamped", timing, draw)
    for name, synth in candidates.items():
        out = work / "reports" / REPORT_DIRS[name]
        reports[name] = netdiff.evaluate(work / "test", synth, out, training=work / "train", seed=args.seed,
                                         figures=args.figures, compliance=args.compliance)
        head = overall_metrics(reports[name], dcr_side="holdout" if name in (FLOOR, WINDOWS, RESTAMPED) else "synthetic")
        phases.done(f"evaluate {name.split(' (')[0]}", ", ".join(
            f"{m} {fmt(head[m])}" for m in ("packet C2ST AUC", "TSTR macro-F1", "header-field JSD",
                                            "field MI distance", "flow size-duration JSD")))

    # 7. Sample spread.
    spread = spreads(gen_images, images, kept, height, args.seed)
    phases.done("spread")

    res = {"level": level, "seed": args.seed, "count": args.count, "mix": args.mix, "counts": counts,
           "rows": args.rows or height,
           "evaluated_per_class": args.eval_count or args.count, "images_per_s": round(rate, 3),
           "generate_device": made.device,
           "classes": kept, "packets": packets,
           "split": split, "model": {**trained, "config": args.config}, "repairs": repairs, "spread": spread,
           "reports": {n: str(work / "reports" / REPORT_DIRS[n]
                              / "report.json") for n in reports},
           "notes": notes}
    res["table"] = level_table(reports, spread, kept)
    res["timing_s"] = phases.seconds
    # Each level on its own too: levels run separately (to fit a budget) keep their results.
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    # 0. Threads before anything loads numpy or torch; no data, nothing to measure.
    set_threads(args.threads)
    if not args.data.is_dir():
        print(f"fidelity benchmark skipped: no captures at {args.data}")
        return 0
    available = sorted(d.name for d in args.data.iterdir() if d.is_dir())
    classes = available
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        unknown = [c for c in classes if c not in available]
        if unknown:
            print(f"--classes: no folder {', '.join(unknown)} under {args.data} "
                  f"(there are: {', '.join(available)})", file=sys.stderr)
            return 2
    if len(classes) < 2:
        print("fidelity benchmark needs at least two classes (TSTR and C2ST per class)", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()
    torch_threads(args.threads, quiet=not tty)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"fidelity benchmark: {len(classes)} classes from {args.data}, config {args.config}, "
          f"steps {args.steps or 'config default'}, {args.count} images per class"
          + (" on average, at the training mix" if args.mix != "uniform" else "")
          + (f" of {args.rows} packets" if args.rows else "") + f", seed {args.seed}, "
          f"{args.threads} thread(s)"
          + (f", first {args.max_packets_per_file} packets of every capture" if args.max_packets_per_file else ""),
          flush=True)

    # 1.-7. per level: split, images, model, generate, repair, evaluate, spread.
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "levels": {}}
    started = time.perf_counter()
    for level in args.levels:
        results["levels"][level] = run_level(level, classes, args, tty)
    results["total_s"] = round(time.perf_counter() - started, 1)
    import torch

    if torch.cuda.is_available():
        results["gpu"] = {"name": torch.cuda.get_device_name(0),
                          "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        print(f"GPU {results['gpu']['name']}: peak {results['gpu']['peak_allocated_gib']} GiB allocated")

    # 8. Tables (markdown, ready for docs/results.md) and everything in results.json.
    md = "\n".join(markdown_level(level, res) for level, res in results["levels"].items())
    print()
    print(md)
    print(f"total {results['total_s']:.1f} s; {args.work / 'results.json'}")
    (args.work / "results.md").write_text(md)
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
