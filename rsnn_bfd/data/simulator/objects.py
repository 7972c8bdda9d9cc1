"""The three object classes as analytic signed-distance functions with random proportions.

helmet = ellipsoidal dome shell cut near its equator, with a rim lip that widens into a visor;
box = rounded cuboid (microwave) with a recessed door, a control panel and a bar handle on
stand-offs; plane = capsule fuselage, swept tapered wings, two engine nacelles, tail plane and
fin. Thin parts are at least 1.2 mm thick so that the simulator's 1.04 mm contact sampling
resolves them. Shapes are in units of their own size; ``whisker_sim`` scales and moves them.
"""
from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------- SDF primitives
def _len(*c):
    return np.sqrt(sum(x * x for x in c))


def _box_from_q(qx, qy, qz):
    return (_len(np.maximum(qx, 0), np.maximum(qy, 0), np.maximum(qz, 0))
            + np.minimum(np.maximum(np.maximum(qx, qy), qz), 0))


def _box(x, y, z, cx, cy, cz, hx, hy, hz):
    return _box_from_q(np.abs(x - cx) - hx, np.abs(y - cy) - hy, np.abs(z - cz) - hz)


def _capsule(x, y, z, a, b, r):
    ba = np.subtract(b, a)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / float(ba @ ba), 0, 1)
    return _len(px - t * ba[0], py - t * ba[1], pz - t * ba[2]) - r


def _ellipsoid(x, y, z, ra, rb, rc):
    k0 = _len(x / ra, y / rb, z / rc)
    k1 = np.maximum(_len(x / ra ** 2, y / rb ** 2, z / rc ** 2), 1e-9)
    return k0 * (k0 - 1) / k1


# ----------------------------------------------------------------------------- object shapes
def draw_shape(kind: str, rng: np.random.Generator) -> dict:
    """Random proportions (object units, roughly 2 across) of one object of class ``kind``."""
    u = rng.uniform
    if kind == "helmet":
        return dict(kind=kind, a=1.0, b=u(0.88, 1.0), c=u(0.85, 1.05), t=u(0.06, 0.12),
                    zcut=u(-0.15, 0.15), w0=u(0.03, 0.12), wv=u(0.0, 0.45), h=u(0.04, 0.09))
    if kind == "box":
        hx, hy, hz = 1.0, u(0.75, 0.95), u(0.6, 0.85)
        return dict(kind=kind, hx=hx, hy=hy, hz=hz, r=u(0.02, 0.07), panel=u(0.25, 0.45),
                    depth=u(0.02, 0.06), hr=u(0.025, 0.05), hoff=u(0.06, 0.12), hlen=u(0.5, 0.8))
    if kind == "plane":
        return dict(kind=kind, rf=u(0.07, 0.13), xw=u(-0.2, 0.15), span=u(0.8, 1.15),
                    cr=u(0.3, 0.48), taper=u(0.25, 0.5), sweep=u(0.35, 0.75), tw=u(0.015, 0.03),
                    zw=u(-0.06, 0.02), tspan=u(0.28, 0.42), tchord=u(0.14, 0.22),
                    fin=u(0.28, 0.45), eng=u(0.04, 0.07))
    raise ValueError(kind)


def shape_sdf(p: dict, x, y, z):
    """Signed distance (object units) of shape ``p`` at points (x, y, z)."""
    k = p["kind"]
    if k == "helmet":
        a, b, c, t = p["a"], p["b"], p["c"], p["t"]
        shell = np.abs(_ellipsoid(x, y, z, a, b, c)) - t / 2
        dome = np.maximum(shell, p["zcut"] - z)
        e = np.sqrt(max(1.0 - (p["zcut"] / c) ** 2, 0.05))
        rho = _len(x / (a * e), y / (b * e))  # 1 on the shell at the cut
        fx = np.clip(x / (a * e), 0, 1) ** 2  # visor toward +x
        w = p["w0"] + p["wv"] * fx
        dr = (np.abs(rho - 1 - w / 2) - w / 2) * min(a, b) * e
        rim = _box_from_q(dr, np.abs(z - p["zcut"]) - p["h"] / 2, -1.0)
        return np.minimum(dome, rim)
    if k == "box":
        hx, hy, hz, r = p["hx"], p["hy"], p["hz"], p["r"]
        body = _box(x, y, z, 0, 0, 0, hx - r, hy - r, hz - r) - r
        pw = p["panel"] * 2 * hx
        dx0, dx1 = -hx + 0.07, hx - pw
        recess = _box(x, y, z, (dx0 + dx1) / 2, -hy, 0, (dx1 - dx0) / 2, p["depth"], hz - 0.07)
        body = np.maximum(body, -recess)
        xh = dx1 - 0.08
        yh = -hy - p["hoff"]
        zl = p["hlen"] * hz
        handle = _capsule(x, y, z, (xh, yh, -zl), (xh, yh, zl), p["hr"])
        stand = np.minimum(_box(x, y, z, xh, (yh - hy) / 2, 0.9 * zl, 0.025, p["hoff"] / 2, 0.025),
                           _box(x, y, z, xh, (yh - hy) / 2, -0.9 * zl, 0.025, p["hoff"] / 2, 0.025))
        return np.minimum(np.minimum(body, handle), stand)
    if k == "plane":
        rf = p["rf"]
        fus = _capsule(x, y, z, (-1.0 + rf, 0, 0), (1.0 - rf, 0, 0), rf)
        ay = np.abs(y)
        # main wings: swept, tapered plate
        S = p["span"]
        uu = np.clip(ay / S, 0, 1)
        chord = p["cr"] * (1 - (1 - p["taper"]) * uu)
        dx = x - (p["xw"] + ay * p["sweep"])
        wing = _box_from_q(np.abs(dx) - chord / 2, ay - S, np.abs(z - p["zw"]) - p["tw"])
        # engines under the wings
        ye = 0.38 * S
        xe = p["xw"] + ye * p["sweep"] - 0.12
        eng = _capsule(x, ay, z, (xe - 0.12, ye, p["zw"] - 0.09), (xe + 0.1, ye, p["zw"] - 0.09), p["eng"])
        # tail plane and fin
        St = p["tspan"]
        ut = np.clip(ay / St, 0, 1)
        ct = p["tchord"] * (1 - 0.5 * ut)
        dxt = x - (0.78 + ay * p["sweep"])
        tail = _box_from_q(np.abs(dxt) - ct / 2, ay - St, np.abs(z - 0.02) - p["tw"])
        H = p["fin"]
        zz = np.maximum(z, 0)
        cf = p["tchord"] * 1.3 * (1 - 0.5 * np.clip(z / H, 0, 1))
        dxf = x - (0.8 + zz * p["sweep"])
        fin = _box_from_q(np.abs(dxf) - cf / 2, np.abs(y) - p["tw"], np.abs(z - H / 2) - H / 2)
        return np.minimum(np.minimum(np.minimum(fus, wing), np.minimum(eng, tail)), fin)
    raise ValueError(k)


def shape_extent(p: dict):
    """Bounding-box diagonal and a bounding radius (object units), from a conservative grid."""
    g = np.linspace(-2.0, 2.0, 49)
    cell = g[1] - g[0]
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    d = shape_sdf(p, X.ravel(), Y.ravel(), Z.ravel())
    inside = d < cell * 0.87
    P = np.stack([X.ravel()[inside], Y.ravel()[inside], Z.ravel()[inside]], 1)
    lo, hi = P.min(0), P.max(0)
    return float(np.linalg.norm(hi - lo)), float(np.linalg.norm(P, axis=1).max() + 2 * cell)
