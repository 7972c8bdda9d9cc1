"""The simulator's version and parameters, recorded in every file it writes.
"""
from __future__ import annotations

GENERATOR_VERSION = "whisker_sim 2.0"


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
