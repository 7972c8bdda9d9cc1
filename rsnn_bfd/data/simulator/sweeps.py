"""One object swept past the whisker array: its shape, path and the forces and torques at
the whiskers' first three joints.

The objects: helmets, boxes and planes as analytic signed-distance functions with random
proportions per object (:mod:`rsnn_bfd.data.simulator.objects`).

The sweeps follow the original dataset's protocol (``whisker_array.csv`` and the sweep
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

The mechanics (quasi-static, one contact per whisker and frame). The whiskers are the
cantilevers of :mod:`rsnn_bfd.data.simulator.array`, with the compliance c(s) at each
contact-test point. At every frame the object's signed distance is evaluated at all whisker
points (the object moves rigidly, whiskers are at rest shape); penetration depth pen(s) is
the deflection the whisker needs to clear the object at s. A real whisker slips along or
bends around an object rather than deflecting without bound, so the deflection saturates: d
= d_max tanh(pen / d_max), with d_max = mu s (it slides off once its deflection angle
exceeds the friction angle). The point that needs the largest load k(s) d (k = 1/c) is the
contact; it carries |F| = k d along the object's outward surface normal (central-difference
SDF gradient) plus Coulomb friction mu |F| along the object's tangential velocity, with one
friction coefficient for every class (mu = 0.5, the physics engine's default in the
original; the classes differ by shape only). Static equilibrium of the link chain: every
joint between the base and the contact carries the contact force F and the moment (r_contact
- r_node) x F; joints beyond the contact carry nothing, and without contact everything is
exactly 0. Forces are in uN and torques in uN mm, which puts contacts in the ranges the
spike encoder expects (|F| ~ 1-100, |tau| ~ 10-1000).

Limitations: no whisker-whisker interaction, no dynamics or vibration, no history (a whisker
that slips past a thin part springs back at once); non-uniformly scaled SDFs are approximate
distances, which only affects penetration depths slightly. ``--stats`` describes a dataset
(:mod:`rsnn_bfd.data.simulator.statistics`); the figures of the default one are in
``docs/RESULTS.md``.
"""
from __future__ import annotations

import numpy as np

from rsnn_bfd.data.files import CLASS_NAMES
from rsnn_bfd.data.simulator.array import rotation, whisker_array
from rsnn_bfd.data.simulator.objects import draw_shape, shape_extent, shape_sdf
from rsnn_bfd.data.simulator.params import PARAMS


def _euler(a, b, c):
    return rotation("z", a) @ rotation("y", b) @ rotation("x", c)


def _axis_angle(axis, t):
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


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
    A = whisker_array()
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


def simulate_task(task):
    class_index, entropy = task
    return simulate_object(class_index, np.random.SeedSequence(entropy))
