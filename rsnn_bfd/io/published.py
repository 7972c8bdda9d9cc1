"""The published implementation's trained networks, converted into this project's network.

A file is read by :func:`rsnn_bfd.io.unpickler.read_published` (a restricted unpickler
that runs no code) into inert stand-ins. :func:`convert` then builds this project's
:class:`rsnn_bfd.network.model.BarrelCortexRSNN` from the stand-in:

    published            ours
    fc_f, fc_t / fc      encoder.force, encoder.torque / encoder.fc
    barrelloid           thalamus_input; barrelloid_tau_m / _tau_adp -> thal_tau_m / _tau_adp
    ThtoPops[k]          rows of population i of ``thalamocortical``, k-th i with Prob_ThtoAll[i] > 0
    toPops[i][k]         block [post i, pre j] of ``recurrent``, k-th j with Prob_AlltoAll[j, i] > 0
    tau_m, tau_adp       lists of 13 Parameters, concatenated to (4218,)
    fc2_1, fc2_2         readout[0], readout[1]
    init_b, init_w       ModelConfig.init_b, .init_w

The sparse weights are taken as the published forward uses them, ``clamp(w, 0, 1) * mask``
(the file keeps the optimiser's values, some outside ``[0, 1]``); signs are the file's
``Type_AlltoAll``, which must agree with the presynaptic type of our anatomy. A file whose
anatomy (population sizes and types, signs, which blocks exist) differs from ours is refused
with what differs.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from rsnn_bfd.io.unpickler import InertModule, PublishedError, read_published


# -------------------------------------------------------------------------------- convert
def _array(value, what: str, path) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PublishedError(f"{path}: {what} is not numeric") from None


def _tensor(value, what: str, shape: tuple, path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise PublishedError(f"{path}: {what} is missing or not a float tensor")
    if tuple(value.shape) != tuple(shape):
        raise PublishedError(f"{path}: {what} has shape {tuple(value.shape)}, expected {shape}")
    return value.detach()


def _modules_of(node: InertModule | None, what: str, path) -> list:
    if not isinstance(node, InertModule) or "_modules" not in node.state:
        raise PublishedError(f"{path}: {what} is missing")
    return list(node.state["_modules"].values())


def _linear(node, what: str, shape: tuple, path, bias=True):
    if not isinstance(node, InertModule):
        raise PublishedError(f"{path}: layer {what} is missing")
    w = _tensor(node.parameter("weight"), f"{what}.weight", shape, path)
    b = _tensor(node.parameter("bias"), f"{what}.bias", shape[:1], path) if bias else None
    return w, b


def _sparse_block(node, what: str, shape: tuple, path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, effective weight) of a SparseLinear2: ``clamp(w, 0, 1) * mask``, as the
    published forward uses it before every product."""
    w, _ = _linear(node, what, shape, path, bias=False)
    mask = _tensor(node.state.get("mask"), f"{what}.mask", shape, path)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise PublishedError(f"{path}: {what}.mask is not binary")
    return mask != 0, w.clamp(0, 1) * mask


def _check_anatomy(root: InertModule, anatomy, path) -> tuple:
    """The file's populations and blocks against ours; returns (thalamic pops, recurrent
    sources per post population). Refuses with what differs."""
    st = root.state
    sizes = [int(v) for v in (st.get("popSize") or [])]
    if sizes != [int(v) for v in anatomy.sizes]:
        raise PublishedError(f"{path}: another anatomy: population sizes {sizes} differ from "
                             f"ours {[int(v) for v in anatomy.sizes]}")
    types = [str(t) for t in (st.get("popType") or [])]
    ours = [p.type for p in anatomy.populations]
    if types and types != ours:
        raise PublishedError(f"{path}: another anatomy: population types {types} differ from "
                             f"ours {ours}")
    n_pop = len(sizes)
    p_rec = _array(st.get("Prob_AlltoAll"), "Prob_AlltoAll", path)
    sign = _array(st.get("Type_AlltoAll"), "Type_AlltoAll", path)
    p_thal = _array(st.get("Prob_ThtoAll"), "Prob_ThtoAll", path).reshape(-1)
    if p_rec.shape != (n_pop, n_pop) or sign.shape != (n_pop, n_pop) or p_thal.shape != (n_pop,):
        raise PublishedError(f"{path}: connection tables of shape {p_rec.shape}, {sign.shape}, "
                             f"{p_thal.shape}, expected ({n_pop}, {n_pop}) and ({n_pop},)")
    # published tables are [pre, post]; ours [post, pre]
    blocks, our_blocks = (p_rec.T != 0), (anatomy.p_rec != 0)
    if not np.array_equal(blocks, our_blocks):
        post, pre = np.argwhere(blocks != our_blocks)[0]
        names = anatomy.names
        raise PublishedError(f"{path}: another anatomy: {int((blocks != our_blocks).sum())} "
                             f"blocks differ, e.g. {names[pre]} -> {names[post]} "
                             f"{'exists' if blocks[post, pre] else 'is absent'} in the file")
    if not np.array_equal(p_thal != 0, anatomy.p_thal != 0):
        i = int(np.argmax((p_thal != 0) != (anatomy.p_thal != 0)))
        raise PublishedError(f"{path}: another anatomy: the thalamic input to "
                             f"{anatomy.names[i]} differs")
    pre_type = np.array([1.0 if p.excitatory else -1.0 for p in anatomy.populations])
    for post in range(n_pop):
        src = np.nonzero(p_rec[:, post])[0]
        if not np.array_equal(src, np.nonzero(sign[:, post])[0]):
            raise PublishedError(f"{path}: Type_AlltoAll and Prob_AlltoAll disagree on the "
                                 f"sources of {anatomy.names[post]}")
        wrong = src[sign[src, post] != pre_type[src]]
        if wrong.size:
            raise PublishedError(f"{path}: another anatomy: the sign of "
                                 f"{anatomy.names[wrong[0]]} -> {anatomy.names[post]} is "
                                 f"{sign[wrong[0], post]:+.0f}, ours {pre_type[wrong[0]]:+.0f}")
    thal_pops = [int(i) for i in np.nonzero(p_thal)[0]]
    sources = [[int(j) for j in np.nonzero(p_rec[:, i])[0]] for i in range(n_pop)]
    return thal_pops, sources


def encoder_of(root: InertModule) -> str:
    """``spiking`` (``fc_f``, ``fc_t``) or ``realvalued`` (``fc``), from the layers present."""
    mods = root.state.get("_modules", {})
    if "fc_f" in mods and "fc_t" in mods:
        return "spiking"
    if "fc" in mods:
        return "realvalued"
    raise ValueError("neither the spiking (fc_f, fc_t) nor the real-valued (fc) encoder")


def convert(root: InertModule, path="<published>", dtype=torch.float32):
    """(model, ckpt) of this project from a published stand-in (see the module docstring).

    ``ckpt`` is a checkpoint dict as :func:`rsnn_bfd.io.checkpoint.read_checkpoint` returns
    one: the model config, the published script's training config (the paper's settings, whose
    batch size 128 sets the initial-state rows of an evaluation as the published scripts
    evaluate), and ``source`` (file, sha256, class).
    """
    from rsnn_bfd.config import RealValuedConfig, SpikingConfig
    from rsnn_bfd.network.anatomy import load_anatomy
    from rsnn_bfd.network.model import ModelConfig, build_model

    st = root.state
    try:
        encoder = encoder_of(root)
    except ValueError as err:
        raise PublishedError(f"{path}: the network has {err}") from None
    try:
        init_b, init_w = float(st["init_b"]), float(st["init_w"])
    except (KeyError, TypeError, ValueError):
        raise PublishedError(f"{path}: init_b / init_w missing from the network") from None
    anatomy = load_anatomy()
    thal_pops, sources = _check_anatomy(root, anatomy, path)
    # the published initialisation is exactly tau_m = 10, tau_adp = 5
    config = ModelConfig(encoder=encoder, init_b=init_b, init_w=init_w,
                         tau_m_range=(10.0, 10.0), tau_adp_range=(5.0, 5.0))
    model = build_model(config, dtype=torch.float64, engine="reference")
    n, n_thal, off = model.n_neurons, config.n_thalamus, model.population_offsets
    sizes = [int(s) for s in anatomy.sizes]

    # thalamocortical: ThtoPops[k] drives the k-th population with thalamic input
    tc = _modules_of(root.module("ThtoPops"), "ThtoPops", path)
    if len(tc) != len(thal_pops):
        raise PublishedError(f"{path}: ThtoPops has {len(tc)} layers, the anatomy "
                             f"{len(thal_pops)}")
    tc_mask = torch.zeros(n, n_thal, dtype=torch.bool)
    tc_w = torch.zeros(n, n_thal, dtype=torch.float64)
    for node, i in zip(tc, thal_pops):
        m, w = _sparse_block(node, f"ThtoPops[{i}]", (sizes[i], n_thal), path)
        tc_mask[off[i]:off[i + 1]], tc_w[off[i]:off[i + 1]] = m, w.double()
    # recurrent: toPops[i][k] from the k-th source j of population i
    posts = _modules_of(root.module("toPops"), "toPops", path)
    if len(posts) != len(sizes):
        raise PublishedError(f"{path}: toPops has {len(posts)} populations, expected {len(sizes)}")
    rec_mask = torch.zeros(n, n, dtype=torch.bool)
    rec_w = torch.zeros(n, n, dtype=torch.float64)
    for i, (inner, src) in enumerate(zip(posts, sources)):
        layers = _modules_of(inner, f"toPops[{i}]", path)
        if len(layers) != len(src):
            raise PublishedError(f"{path}: toPops[{i}] has {len(layers)} layers, the anatomy "
                                 f"{len(src)}")
        for node, j in zip(layers, src):
            m, w = _sparse_block(node, f"toPops[{i}][{j}]", (sizes[i], sizes[j]), path)
            rec_mask[off[i]:off[i + 1], off[j]:off[j + 1]] = m
            rec_w[off[i]:off[i + 1], off[j]:off[j + 1]] = w.double()

    def taus(name):
        values = st.get(name)
        if not isinstance(values, list) or len(values) != len(sizes):
            raise PublishedError(f"{path}: {name} is not a list of {len(sizes)} tensors")
        return torch.cat([_tensor(v, f"{name}[{i}]", (s,), path).double()
                          for i, (v, s) in enumerate(zip(values, sizes))])

    n_in = config.n_inputs_spiking if encoder == "spiking" else config.n_inputs_realvalued
    n_readout = len(anatomy.readout_neurons)
    with torch.no_grad():
        model.recurrent.set_connections(rec_mask, rec_w)
        model.thalamocortical.set_connections(tc_mask, tc_w)
        if encoder == "spiking":
            pairs = [(model.encoder.force, "fc_f", (n_thal // 2, n_in)),
                     (model.encoder.torque, "fc_t", (n_thal // 2, n_in))]
        else:
            pairs = [(model.encoder.fc, "fc", (n_thal, n_in))]
        pairs += [(model.thalamus_input, "barrelloid", (n_thal, n_thal)),
                  (model.readout[0], "fc2_1", (config.readout_hidden, n_readout)),
                  (model.readout[1], "fc2_2", (config.n_classes, config.readout_hidden))]
        for layer, name, shape in pairs:
            w, b = _linear(root.module(name), name, shape, path)
            layer.weight.copy_(w.double())
            layer.bias.copy_(b.double())
        model.thal_tau_m.copy_(_tensor(root.parameter("barrelloid_tau_m"),
                                       "barrelloid_tau_m", (n_thal,), path).double())
        model.thal_tau_adp.copy_(_tensor(root.parameter("barrelloid_tau_adp"),
                                         "barrelloid_tau_adp", (n_thal,), path).double())
        model.tau_m.copy_(taus("tau_m"))
        model.tau_adp.copy_(taus("tau_adp"))
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise PublishedError(f"{path}: {len(bad)} parameter(s) hold NaN or infinite values "
                             f"(e.g. {bad[0]!r})")
    model = model.to(dtype)
    model.use_engine("auto")
    model.eval()

    cls = SpikingConfig if encoder == "spiking" else RealValuedConfig
    train_config = asdict(cls(init_b=init_b, init_w=init_w))
    train_config.update(out="", resume="")
    source = {"file": str(path), "class": root.kind, "format": "torch.save(model)",
              "sha256": getattr(root, "sha256", None)}
    ckpt = {"format": "barrel-rsnn-checkpoint", "version": 2,
            "model_config": config.to_dict(), "model_state": model.state_dict(),
            "optimizer_state": None, "scheduler_state": None, "epoch": 0,
            "train_config": train_config, "dtype": str(dtype).replace("torch.", ""),
            "best_test_acc": None, "published_source": source}
    return model, ckpt


def load_published(path, device="cpu", dtype=torch.float32):
    """Read and convert a published network: ``(model, ckpt)`` on ``device``."""
    model, ckpt = convert(read_published(path), path, dtype)
    return model.to(device), ckpt
