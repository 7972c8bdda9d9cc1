"""Whisker sweep simulator: makes a dataset with the layout and character of the original files.

    python whisker_sim.py --out DIR [--objects-per-class 91] [--seed 0] [--workers N]
    python whisker_sim.py --stats DIR      # sweep statistics of the dataset in DIR (JSON)

writes ``DIR/snn_train3.h5`` and ``DIR/snn_test3.h5`` (a folder holding either is refused
unless ``--overwrite``; both are renamed into place together when the generation ends):

    force   (N, 12, 110, 31, 3, 3) float32   sweeps x frames x whiskers x nodes x (x, y, z), world frame
    torque  (N, 12, 110, 31, 3, 3) float32
    label   (N,) float64                     53 helmet, 55 box, 113 plane

with an 80/20 split inside each class (218/55 for 91 objects per class) and the generation
parameters as file attributes. Same seed -> byte-identical files, whatever ``--workers``
(each object has its own seed, ``SeedSequence([seed, class, object])``).

The array. The 31 whiskers of ``data/whisker_array.csv`` (RatMap, Towal et al. 2011): rest
shape y = a z^2 in the whisker frame, world = M local + base with M = P Rz(roll) Ry(yaw)
Rx(pitch) P. As in the original, each whisker is a chain of ``n_links`` links of 2.08 mm;
contact is tested at the joints and link midpoints (1.04 mm spacing). Nodes 0, 1, 2 are the
joints at arc length 0, 2.08, 4.16 mm.

The objects: helmets, boxes and planes as analytic signed-distance functions with random
proportions per object (:mod:`whisker_objects`).

The sweeps follow the original dataset's protocol (``data/whisker_array.csv`` and the sweep
protocol of the original generator, neuroailab/whisker_model with ``reset_pos``,
``reset_speed``, ``set_speed_objs`` and ``avoid_coll`` on; :func:`sweep_path`): bounding-box
diagonal U(25, 135) mm, orientation from three Euler angles U(0, 2 pi), start position
(-10.12 + U(-10, 10), 13 + U(-4, 4), -27 + U(-10, 10)), speed U(7, 14) mm/s toward the array
centroid + (0, 0, -4); 12 sweeps per object, k = 4 * offset + rotation, with x offsets
(0, -20, +20) mm and rotations 0/90/180/270 deg about one random axis. The object's point
furthest along its velocity (its point nearest the array) starts at the start position, so
its front starts about 26 mm from the array centroid in y whatever its size; it is lowered in
z until a 20^3 grid over its bounding box, moved along the path, passes 5 mm below the first
link of every whisker within 10 mm in x; then it moves at constant velocity for all 110
frames (11 s at 10 Hz) and never stops.

The mechanics (quasi-static, one contact per whisker and frame). Whiskers are passive,
tapered Euler-Bernoulli cantilevers clamped at the base: radius falls linearly from
r_base = 0.02 + 0.0008 L mm (L = whisker length in mm) to r_tip = 5 um, E = 3.5 GPa,
I(x) = pi r(x)^4 / 4. The compliance at arc length s for a point load there is
c(s) = int_0^s (s - x)^2 / (E I(x)) dx, precomputed per contact-test point. At every frame
the object's signed distance is evaluated at all whisker points (the object moves rigidly,
whiskers are at rest shape); penetration depth pen(s) is the deflection the whisker needs to
clear the object at s. A real whisker slips along or bends around an object rather than
deflecting without bound, so the deflection saturates: d = d_max tanh(pen / d_max), with
d_max = mu s (it slides off once its deflection angle exceeds the friction angle). The point
that needs the largest load k(s) d (k = 1/c) is the contact; it carries |F| = k d along the
object's outward surface normal (central-difference SDF gradient) plus Coulomb friction
mu |F| along the object's tangential velocity, with one friction coefficient for every class
(mu = 0.5, the physics engine's default in the original; the classes differ by shape only).
Static equilibrium of the link chain: every joint between the base and the contact carries
the contact force F and the moment (r_contact - r_node) x F; joints beyond the contact carry
nothing, and without contact everything is exactly 0. Forces are in uN and torques in uN mm,
which puts contacts in the ranges the spike encoder expects (|F| ~ 1-100, |tau| ~ 10-1000).

Limitations: no whisker-whisker interaction, no dynamics or vibration, no history (a whisker
that slips past a thin part springs back at once); non-uniformly scaled SDFs are approximate
distances, which only affects penetration depths slightly. ``--stats`` describes a dataset
(:mod:`whisker_statistics`); the figures of the default one are in ``docs/RESULTS.md``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import build_parser, flag, require, run_cli, seed_check
from common import atomic_path, check_writable_dir, end_with_parent, remove_stale_temps
from whisker_dataset import CLASS_LABELS, CLASS_NAMES, TEST_FILE, TRAIN_FILE
from whisker_objects import draw_shape, shape_extent, shape_sdf

GENERATOR_VERSION = "whisker_sim 2.0"
ARRAY_CSV = Path(__file__).resolve().parent / "data" / "whisker_array.csv"

PARAMS = dict(
    n_sweeps=12, n_frames=110, frame_dt_s=0.1, n_nodes=3,
    link_length_mm=2.08, sample_spacing_mm=1.04,
    youngs_modulus_gpa=3.5, base_radius_mm="0.02 + 0.0008 * length_mm", tip_radius_mm=0.005,
    slip_angle_per_mu=1.0, friction_mu=0.5,
    bbox_diagonal_mm=[25.0, 135.0], speed_mm_s=[7.0, 14.0],
    start_mean_mm=[-10.12, 13.0, -27.0], start_halfrange_mm=[10.0, 4.0, 10.0],
    array_centroid_mm=[-10.12, -13.17, -19.00], target_offset_mm=[0.0, 0.0, -4.0],
    avoid_grid=20, avoid_z_mm=5.0, avoid_x_mm=10.0, x_offsets_mm=[0.0, -20.0, 20.0],
    rotations_deg=[0, 90, 180, 270], min_half_thickness_mm=0.6,
    force_unit="uN", torque_unit="uN mm", test_fraction=0.2,
)


# ----------------------------------------------------------------------------- whisker array
def _rot(axis: str, t: float) -> np.ndarray:
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def load_whisker_array(path=ARRAY_CSV) -> list[dict]:
    """Rows of the whisker table (comment lines starting with # are skipped)."""
    with open(path) as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    rows = []
    for r in csv.DictReader(lines):
        rows.append({k: (v if k in ("name", "row") else float(v)) for k, v in r.items()})
    return rows


def whisker_frame(row: dict) -> np.ndarray:
    """M = P Rz(roll) Ry(yaw) Rx(pitch) P (local -> world rotation)."""
    P = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    return P @ _rot("z", row["roll"]) @ _rot("y", row["yaw"]) @ _rot("x", row["pitch"]) @ P


def whisker_points(row: dict, arc: np.ndarray) -> np.ndarray:
    """World points at arc lengths ``arc`` (mm) along the rest shape y = a z^2."""
    a = row["curvature_a"]
    zmax = max(float(np.max(arc)), 1.0) * 1.2
    z = np.linspace(0.0, zmax, 20001)
    dz = np.diff(z)
    s = np.concatenate([[0.0], np.cumsum(np.sqrt(1 + (2 * a * (z[1:] - dz / 2)) ** 2) * dz)])
    zs = np.interp(arc, s, z)
    local = np.stack([np.zeros_like(zs), a * zs ** 2, zs], axis=-1)
    return local @ whisker_frame(row).T + np.array([row["base_x"], row["base_y"], row["base_z"]])


def build_array(path=ARRAY_CSV) -> dict:
    """Contact-test points, their compliance and the node positions of the 31 whiskers."""
    rows = load_whisker_array(path)
    E = PARAMS["youngs_modulus_gpa"] * 1e3  # N / mm^2
    h = PARAMS["sample_spacing_mm"]
    link = PARAMS["link_length_mm"]
    nw = len(rows)
    n_pts = [2 * int(r["n_links"]) for r in rows]  # points at s = h, 2h, ..., n_links * link
    J = max(n_pts)
    pts = np.zeros((nw, J, 3))
    arc = np.zeros((nw, J))
    comp = np.full((nw, J), np.inf)
    valid = np.zeros((nw, J), bool)
    nodes = np.zeros((nw, 3, 3))
    for w, r in enumerate(rows):
        length = int(r["n_links"]) * link
        s = h * np.arange(1, n_pts[w] + 1)
        pts[w, :n_pts[w]] = whisker_points(r, s)
        pts[w, n_pts[w]:] = pts[w, n_pts[w] - 1]
        arc[w, :n_pts[w]] = s
        valid[w, :n_pts[w]] = True
        nodes[w] = whisker_points(r, link * np.arange(3))
        rb = 0.02 + 0.0008 * r["arc_length"]
        rt = PARAMS["tip_radius_mm"]
        x = np.linspace(0.0, length, 4001)
        inv_ei = 1.0 / (E * np.pi * (rb + (rt - rb) * x / length) ** 4 / 4)
        for j, sc in enumerate(s):
            m = x <= sc
            xs = np.append(x[m], sc)
            f = (sc - xs) ** 2 * np.append(inv_ei[m], np.interp(sc, x, inv_ei))
            comp[w, j] = np.trapezoid(f, xs) if hasattr(np, "trapezoid") else np.trapz(f, xs)
    return dict(rows=rows, pts=pts, arc=arc, stiffness=np.where(valid, 1.0 / comp, 0.0),
                valid=valid, nodes=nodes, n_pts=np.array(n_pts))


def _euler(a, b, c):
    return _rot("z", a) @ _rot("y", b) @ _rot("x", c)


def _axis_angle(axis, t):
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


# ----------------------------------------------------------------------------- one object
_ARRAY = None


def _array():
    global _ARRAY
    if _ARRAY is None:
        _ARRAY = build_array()
    return _ARRAY


def draw_object(class_index: int, seed_seq: np.random.SeedSequence) -> dict:
    """Shape, scale, orientation and path parameters of one object."""
    rng = np.random.default_rng(seed_seq)
    shape = draw_shape(CLASS_NAMES[class_index], rng)
    diag_mm = rng.uniform(*PARAMS["bbox_diagonal_mm"])
    euler = rng.uniform(0, 2 * np.pi, 3)
    axis = rng.normal(size=3)
    start = np.array(PARAMS["start_mean_mm"]) + rng.uniform(-1, 1, 3) * np.array(PARAMS["start_halfrange_mm"])
    speed = rng.uniform(*PARAMS["speed_mm_s"])
    diag_unit, radius_unit = shape_extent(shape)
    scale = diag_mm / diag_unit  # mm per object unit
    tmin = PARAMS["min_half_thickness_mm"] / scale
    for key in ("t", "tw"):  # keep thin parts resolvable by the 1.04 mm contact sampling
        if key in shape:
            shape[key] = max(shape[key], 2 * tmin if key == "t" else tmin)
    return dict(shape=shape, scale=scale, radius_mm=radius_unit * scale, euler=euler, axis=axis,
                start=start, speed=speed, diag_mm=diag_mm)


def _shape_points(shape: dict) -> np.ndarray:
    """Points inside shape ``shape`` on a 49^3 grid (object units), (M, 3)."""
    g = np.linspace(-2.0, 2.0, 49)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    P = np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)
    return P[shape_sdf(shape, *P.T) < 0]


def sweep_path(obj: dict, R: np.ndarray, x_offset: float, first_links: np.ndarray,
               points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object centre per frame (n_frames, 3) and velocity (3,) of one sweep, in mm.

    As the original generator (``reset_pos``, ``reset_speed``, ``set_speed_objs`` and
    ``avoid_coll`` all on): the velocity points from the start position to the array centroid
    + ``target_offset_mm``; the object is placed so that its point furthest along the
    velocity (its point nearest the array) sits at the start position; then it is lowered in
    z until a 20 x 20 x 20 grid over its bounding box, moved along the path to the y of each
    whisker's first link, passes ``avoid_z_mm`` below every first link within
    ``avoid_x_mm`` in x. It moves at constant velocity for all frames.

    R: object rotation (object -> world); first_links: (31, 3) first-link centres;
    points: (M, 3) points inside the object, object units.
    """
    offset = np.array([x_offset, 0.0, 0.0])
    start = obj["start"] + offset
    target = np.array(PARAMS["array_centroid_mm"]) + np.array(PARAMS["target_offset_mm"]) + offset
    velocity = obj["speed"] * (target - start) / np.linalg.norm(target - start)
    scaled = points * obj["scale"]
    world = scaled @ R.T
    centre = start - world[np.argmax(world @ velocity)]
    # avoid_coll: lower the path so that the bounding box clears the whisker bases
    lo, hi = scaled.min(0), scaled.max(0)
    n = PARAMS["avoid_grid"]
    ax = [lo[k] + (hi[k] - lo[k]) / n * np.arange(n) for k in range(3)]
    grid = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3) @ R.T + centre
    when = (first_links[None, :, 1] - grid[:, None, 1]) / velocity[1]      # (G, 31)
    at = grid[:, None, :] + when[..., None] * velocity                     # (G, 31, 3)
    floor = first_links[None, :, 2] - PARAMS["avoid_z_mm"]
    near = np.abs(at[..., 0] - first_links[None, :, 0]) < PARAMS["avoid_x_mm"]
    excess = np.where(near & (at[..., 2] > floor), at[..., 2] - floor, 0.0)
    centre = centre - np.array([0.0, 0.0, excess.max(initial=0.0)])
    t = np.arange(PARAMS["n_frames"]) * PARAMS["frame_dt_s"]
    return centre + t[:, None] * velocity, velocity


def simulate_object(class_index: int, seed_seq: np.random.SeedSequence):
    """Force and torque (12, 110, 31, 3, 3) float32 of one object's 12 sweeps."""
    A = _array()
    obj = draw_object(class_index, seed_seq)
    shape, scale = obj["shape"], obj["scale"]
    points = _shape_points(shape)
    nf, nw = PARAMS["n_frames"], A["pts"].shape[0]
    J = A["pts"].shape[1]
    valid = A["valid"]
    pts = A["pts"][valid]  # (Nv, 3)
    arc_v = A["arc"][valid]
    k_v = A["stiffness"][valid]
    first_links = A["pts"][:, 0]  # centre of each whisker's first link (arc 1.04 mm)
    R0 = _euler(*obj["euler"])
    force = np.zeros((12, nf, nw, 3, 3), np.float32)
    torque = np.zeros_like(force)
    rad = obj["radius_mm"]
    mu = PARAMS["friction_mu"]
    sat = PARAMS["slip_angle_per_mu"] * mu  # the whisker slips off at deflection d = mu s

    def sdf_mm(R, centers, P):
        """SDF (mm) of the object at rotation R, centres (F, 3), points P (M, 3) -> (F, M)."""
        rel = (P[None, :, :] - centers[:, None, :]) @ R  # world -> object frame: R^T (p - c)
        out = np.full(rel.shape[:2], np.inf)
        near = np.einsum("fmi,fmi->fm", rel, rel) < rad * rad
        if near.any():
            q = rel[near] / scale
            out[near] = shape_sdf(shape, q[:, 0], q[:, 1], q[:, 2]) * scale
        return out

    for off_i, xoff in enumerate(PARAMS["x_offsets_mm"]):
        for rot_i, ang in enumerate(PARAMS["rotations_deg"]):
            k = 4 * off_i + rot_i
            R = _axis_angle(obj["axis"], np.deg2rad(ang)) @ R0
            centers, velocity = sweep_path(obj, R, xoff, first_links, points)
            d = velocity / np.linalg.norm(velocity)
            sd = sdf_mm(R, centers, pts)  # (F, Nv)
            pen = np.maximum(-sd, 0.0)
            dmax = sat * arc_v
            req = k_v * dmax * np.tanh(pen / dmax)  # N
            full = np.zeros((nf, nw, J))
            full[:, valid] = req
            j = full.argmax(2)  # (F, W)
            fmag = np.take_along_axis(full, j[..., None], 2)[..., 0]
            fi, wi = np.nonzero(fmag > 0)
            if fi.size == 0:
                continue
            ji = j[fi, wi]
            pc = A["pts"][wi, ji]  # contact points, world
            sc = A["arc"][wi, ji]
            # outward normal in world coordinates from the SDF gradient in the object frame
            q = (pc - centers[fi]) @ R / scale
            eps = 1e-4
            grad = np.zeros_like(q)
            for ax in range(3):
                dq = np.zeros(3)
                dq[ax] = eps
                qp, qm = q + dq, q - dq
                grad[:, ax] = (shape_sdf(shape, *qp.T) - shape_sdf(shape, *qm.T)) / (2 * eps)
            nrm = grad @ R.T
            nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
            F = fmag[fi, wi][:, None] * nrm
            # Coulomb friction: the moving object drags the whisker along its tangential velocity
            vt = d[None, :] - (nrm @ d)[:, None] * nrm
            vn = np.linalg.norm(vt, axis=1, keepdims=True)
            fr = mu * fmag[fi, wi][:, None] * vt / np.maximum(vn, 1e-12)
            F = F + np.where(vn > 1e-6, fr, 0.0)
            F_uN = F * 1e6
            for node in range(3):
                on = sc > node * PARAMS["link_length_mm"]
                r = pc - A["nodes"][wi, node]
                force[k, fi[on], wi[on], node] = F_uN[on]
                torque[k, fi[on], wi[on], node] = np.cross(r[on], F_uN[on])
    return force, torque


def _simulate_task(task):
    class_index, entropy = task
    return simulate_object(class_index, np.random.SeedSequence(entropy))


# ----------------------------------------------------------------------------- dataset
def split_counts(objects_per_class: int) -> list[int]:
    """Test objects per class: 20 % of the total (rounded), spread as evenly as possible."""
    n_test = int(round(PARAMS["test_fraction"] * 3 * objects_per_class))
    base = n_test // 3
    return [base + (1 if c < n_test - 3 * base else 0) for c in range(3)]


def plan(objects_per_class: int, seed: int):
    """(train, test) lists of (class_index, seed entropy) in file order."""
    n_test = split_counts(objects_per_class)
    train, test = [], []
    for c in range(3):
        for j in range(objects_per_class):
            task = (c, (int(seed), c, j))
            (test if j >= objects_per_class - n_test[c] else train).append(task)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 999]))
    train = [train[i] for i in rng.permutation(len(train))]
    test = [test[i] for i in rng.permutation(len(test))]
    return train, test


def generate_dataset(out, objects_per_class: int = 91, seed: int = 0, workers=None, log=None,
                     progress: bool = False, overwrite: bool = False):
    """Write ``out/snn_train3.h5`` and ``out/snn_test3.h5``; return their paths.

    About 800 MB (uncompressed float32) for the default 91 objects per class: 218 training
    and 55 test objects.
    ``progress``: a tqdm bar per file. A folder that holds either file is refused (a
    ``ValueError``) unless ``overwrite`` is set; both files are written to temporary files
    and renamed into place together at the end, so an interrupted generation leaves what
    was there. Temporary files of an earlier, interrupted generation into ``out`` are
    deleted first.
    """
    import h5py
    from tqdm import tqdm

    out = Path(out)
    existing = [name for name in (TRAIN_FILE, TEST_FILE) if (out / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {' and '.join(existing)}; the simulator does not "
                         f"write over a dataset: give another --out, or --overwrite to replace "
                         f"{'it' if len(existing) == 1 else 'them'}")
    out = check_writable_dir(out)
    remove_stale_temps(out, (TRAIN_FILE, TEST_FILE))
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    train, test = plan(objects_per_class, seed)
    paths = (out / TRAIN_FILE, out / TEST_FILE)
    t0 = time.time()
    shape = (PARAMS["n_sweeps"], PARAMS["n_frames"], 31, 3, 3)
    pool = (ProcessPoolExecutor(max_workers=workers, initializer=end_with_parent,
                                initargs=(os.getpid(),)) if workers > 1 else None)
    try:
        # both files are renamed into place when the block ends, one right after the other
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(path)) for path in paths]
            for path, tmp, tasks in zip(paths, tmps, (train, test)):
                with h5py.File(tmp, "w", libver="earliest") as h5:
                    n = len(tasks)
                    kw = dict(dtype=np.float32, track_times=False)
                    dsf = h5.create_dataset("force", (n,) + shape, **kw)
                    dst = h5.create_dataset("torque", (n,) + shape, **kw)
                    h5.create_dataset("label", data=np.array([CLASS_LABELS[c] for c, _ in tasks], np.float64),
                                      track_times=False)
                    results = pool.map(_simulate_task, tasks) if pool else map(_simulate_task, tasks)
                    results = tqdm(results, total=n, desc=f"simulating {path.name}",
                                   unit="object", disable=not progress)
                    for i, (f, tq) in enumerate(results):
                        dsf[i] = f
                        dst[i] = tq
                    h5.attrs["seed"] = int(seed)
                    h5.attrs["objects_per_class"] = int(objects_per_class)
                    h5.attrs["generator_version"] = GENERATOR_VERSION
                    h5.attrs["split"] = "train" if path.name == TRAIN_FILE else "test"
                    h5.attrs["parameters"] = json.dumps(PARAMS, sort_keys=True)
                    h5.attrs["classes"] = json.dumps(dict(zip(CLASS_NAMES, CLASS_LABELS)))
                if log:
                    log(f"simulated {path.name} ({len(tasks)} objects, {time.time() - t0:.1f} s)")
        if log:
            log(f"wrote {paths[0]} and {paths[1]}")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return paths


@dataclass
class SimConfig:
    """Settings of ``whisker_sim.py`` (each is a ``--flag``)."""
    out: str = flag(None, "folder to write snn_train3.h5 and snn_test3.h5 into", type=str)
    objects_per_class: int = flag(91, "objects per class (80/20 train / test split inside each)")
    seed: int = flag(0, "seed of the objects and sweeps (same seed: byte-identical files)")
    workers: int = flag(None, "processes (default: all cores)", type=int)
    progress: bool = flag(True, "a progress bar per file")
    overwrite: bool = flag(False, "replace the dataset files already in --out")
    stats: str = flag(None, "instead of generating, write DIR/sweep_statistics.json about the "
                            "dataset in DIR (first contact, contact rates, static presses)",
                      type=str)

    def validate(self) -> "SimConfig":
        require([
            (self.out is not None or self.stats is not None, "--out is required (or --stats DIR)"),
            (self.out is None or self.stats is None,
             "--stats DIR describes a dataset instead of generating one: give --out or --stats"),
            (self.out is None or bool(self.out.strip()), "--out must name a folder, got ''"),
            (self.stats is None or bool(self.stats.strip()), "--stats must name a folder, got ''"),
            (self.objects_per_class >= 1,
             f"--objects-per-class must be >= 1, got {self.objects_per_class}"),
            seed_check(self.seed, "--seed"),
            (self.workers is None or self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
        ])
        return self


def write_statistics(data_dir) -> dict:
    """``--stats``: :func:`whisker_statistics.dataset_statistics` of the dataset in
    ``data_dir``, written as ``data_dir/sweep_statistics.json``."""
    from common import atomic_write_json
    from whisker_dataset import check_data_folder
    from whisker_statistics import dataset_statistics

    data_dir = check_data_folder(data_dir, "--stats")
    missing = [name for name in (TRAIN_FILE, TEST_FILE) if not (data_dir / name).is_file()]
    if missing:
        raise ValueError(f"--stats {data_dir}: no dataset there ({' and '.join(missing)} "
                         f"missing); generate one with python whisker_sim.py --out {data_dir}")
    stats = dataset_statistics(data_dir)
    atomic_write_json(stats, data_dir / "sweep_statistics.json")
    return stats


def main(argv=None) -> int:
    """Parse ``argv`` and generate the dataset (or, with ``--stats``, describe one)."""
    ns = build_parser(SimConfig, description=__doc__.split("\n")[0],
                      prog="whisker_sim.py").parse_args(argv)
    cfg = SimConfig(**vars(ns)).validate()
    if cfg.stats is not None:
        print(json.dumps(write_statistics(cfg.stats), indent=1))
        return 0
    generate_dataset(cfg.out, cfg.objects_per_class, cfg.seed, cfg.workers, log=print,
                     progress=cfg.progress, overwrite=cfg.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
