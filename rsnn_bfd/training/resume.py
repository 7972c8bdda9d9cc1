"""Resuming and reusing runs: the training configuration stored in a checkpoint, checked, and
``--resume``'s merge of a run's stored settings with the flags given now.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rsnn_bfd.config import SCRIPTS, RealValuedConfig, SpikingConfig, TrainConfig
from rsnn_bfd.io.checkpoint import CheckpointError, read_checkpoint
from rsnn_bfd.training.rundir import same_dir


# Settings a run cannot change when it resumes: the network is the checkpoint's, and the data
# it trains on must stay the data it was trained on so far.
_NETWORK = ("encoder", "init_b", "init_w", "tau_scale", "seed", "readout_tau", "surrogate_sigma",
            "surrogate_scale", "surrogate_cutoff", "init_w_thalamic", "balance", "init_state",
            "readout_norm", "readout_centre")
_DATA = ("features", "n_steps", "spike_seed", "val_fraction", "val_seed", "max_train_samples")
FIXED_ON_RESUME = {**{k: "the network (stored in the checkpoint)" for k in _NETWORK},
                   **{k: "the data it trains on" for k in _DATA},
                   "preset": "the recipe (its settings are stored with the run)"}


def stored_train_config(ckpt: dict, path, encoder: str | None = None, fix: str = "") -> dict:
    """The training configuration stored in the checkpoint ``ckpt`` (read from ``path``),
    checked before it is used: it must be one that training accepts (``validate``, its
    paths aside) and name its network's encoder. With ``encoder`` (the script's own), the
    network must also be of that encoder; ``fix`` then says what to do instead. Raises
    :class:`CheckpointError` (one line); returns the stored dict (``{}`` when none)."""
    stored = ckpt.get("train_config") or {}
    network = (ckpt.get("model_config") or {}).get("encoder", "spiking")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: malformed checkpoint (its train_config is a "
                              f"{type(stored).__name__}, not a dict)")
    if stored.get("encoder", network) != network:
        raise CheckpointError(f"{path}: its stored training configuration names the encoder "
                              f"{stored.get('encoder')!r}, but it holds a {network} network; "
                              "the checkpoint is damaged or was edited")
    cls = RealValuedConfig if network == "realvalued" else SpikingConfig
    names = {f.name for f in dataclasses.fields(cls)} - {"out", "resume"}
    try:
        cls(**{k: v for k, v in stored.items() if k in names}).validate()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its stored training configuration is invalid "
                              f"({' '.join(str(err).split())})") from None
    if encoder is not None and network != encoder:
        raise CheckpointError(f"{path} holds a {network} network, not a {encoder} one"
                              + (f"; {fix}" if fix else ""))
    return stored


def resolve_resume(cfg: TrainConfig, given: set[str], log=print) -> TrainConfig:
    """For ``--resume RUN_DIR``: the run's stored config, overridden by the flags given now.
    The run must be of the script's encoder (``cfg.encoder``)."""
    if not cfg.resume:
        return cfg
    run_dir = Path(cfg.resume)
    ckpt_path = run_dir / "checkpoint.pth" if run_dir.is_dir() else run_dir
    if run_dir.is_file():
        run_dir = run_dir.parent
    ckpt = read_checkpoint(ckpt_path)
    network = (ckpt.get("model_config") or {}).get("encoder", "spiking")
    stored = stored_train_config(ckpt, ckpt_path, cfg.encoder,
                                 f"continue it with python {SCRIPTS.get(network, '?')} --resume "
                                 f"{cfg.resume}")
    out = Path(cfg.out) if "out" in given else run_dir
    latest = run_dir / "checkpoint.pth"
    if (same_dir(out, run_dir) and ckpt_path.name != latest.name and latest.is_file()
            and int(read_checkpoint(latest).get("epoch", 0)) > int(ckpt.get("epoch", 0))):
        raise ValueError(
            f"{ckpt_path} is from epoch {ckpt.get('epoch', 0)} but {latest} holds a later one; "
            f"continuing here would replace it. Continue the run with --resume {run_dir}, or "
            f"branch from {ckpt_path.name} into a new folder with --resume {ckpt_path} --out NEW_DIR")
    names = {f.name for f in dataclasses.fields(cfg)}
    merged = {k: v for k, v in stored.items() if k in names}
    merged.update({k: getattr(cfg, k) for k in given})
    merged["resume"] = str(ckpt_path)
    merged["out"] = str(out)
    changed = sorted(k for k in given - {"resume", "out"} if stored.get(k, getattr(cfg, k)) != getattr(cfg, k))
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed:
        k = fixed[0]
        raise ValueError(f"--{k.replace('_', '-')} {getattr(cfg, k)} differs from the run's "
                         f"{stored.get(k)!r}: {FIXED_ON_RESUME[k]} cannot change when a run "
                         f"resumes; continue {run_dir} without it, or start a new run with "
                         "--out NEW_DIR")
    if changed:
        log(f"resuming {run_dir} with changed settings: {', '.join(changed)}")
    return type(cfg)(**merged)
