"""The whisker array: the 31 whiskers of ``whisker_array.csv`` (RatMap, Towal et al. 2011)
as chains of links with their compliances.

Rest shape y = a z^2 in the whisker frame, world = M local + base with
M = P Rz(roll) Ry(yaw) Rx(pitch) P. As in the original generator, each whisker is a chain of
``n_links`` links of 2.08 mm; contact is tested at the joints and link midpoints (1.04 mm
spacing). Nodes 0, 1, 2 are the joints at arc length 0, 2.08, 4.16 mm. Whiskers are passive,
tapered Euler-Bernoulli cantilevers clamped at the base: radius falls linearly from
r_base = 0.02 + 0.0008 L mm (L = whisker length in mm) to r_tip = 5 um, E = 3.5 GPa,
I(x) = pi r(x)^4 / 4; the compliance at arc length s for a point load there is
c(s) = int_0^s (s - x)^2 / (E I(x)) dx, precomputed per contact-test point.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from rsnn_bfd.data.simulator.params import PARAMS

ARRAY_CSV = Path(__file__).resolve().parent / "whisker_array.csv"


# ----------------------------------------------------------------------------- whisker array
def rotation(axis: str, t: float) -> np.ndarray:
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
    return (P @ rotation("z", row["roll"]) @ rotation("y", row["yaw"])
            @ rotation("x", row["pitch"]) @ P)


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


# the array of whisker_array.csv, built once per process (each simulator worker builds its own)
_ARRAY = None


def whisker_array():
    global _ARRAY
    if _ARRAY is None:
        _ARRAY = build_array()
    return _ARRAY
