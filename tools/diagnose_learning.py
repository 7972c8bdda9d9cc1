"""Measure why the RSNN does or does not learn: a small training run, instrumented.

    python tools/diagnose_learning.py --max-train-samples 24 --epochs 30 --out runs/diagnose
    python tools/diagnose_learning.py --loss log-mean-prob --out runs/diagnose_lmp
    python tools/diagnose_learning.py --encoder realvalued --init-b 0.03 --init-w 0.05 ...

Trains on the first ``--max-train-samples`` training samples in one batch of that size
(every flag of the spiking training script applies) and records, per epoch:

* ``loss``, ``train_acc`` of the epoch's updates, and ``loss_after`` / ``acc_after``: the
  same samples evaluated after them;
* firing rates (spikes per neuron per step) of the thalamus and of each of the 13 cortical
  populations on these samples;
* gradient norms per parameter group, averaged over the epoch's steps: encoder, thalamic input
  layer, thalamic time constants, thalamocortical and recurrent weights onto each
  population, cortical time constants, readout;
* the gradient reaching the thalamic spikes through time: ``|dL/ds_thal(t)|`` over the batch
  and units, in 10 windows of equal length (``grad_thal_time``);
* readout saturation: mean over steps and samples of the per-step softmax maximum, the
  fraction of steps where it exceeds 0.99, the fraction of samples whose time-averaged
  probability of the true class is below 0.05 (confidently wrong), and the mean spread of
  the logits (max - min).

Before training it records the input statistics of the subset's sweep 0 (spiking input:
the fraction of input lines whose spike probability exceeds the untouched floor, and the
mean spike probability of those lines). Writes ``diagnostics.jsonl`` (one object per
epoch, the input statistics first), ``diagnostics.csv`` (the scalar columns) and
``diagnostics.png`` to ``--out``.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rsnn_bfd.cli import parse_config, run_cli  # noqa: E402
from rsnn_bfd.common import select_device  # noqa: E402
from rsnn_bfd.writing import atomic_path, atomic_write_text, check_writable_dir  # noqa: E402
from rsnn_bfd.config import SpikingConfig, with_default  # noqa: E402
from rsnn_bfd.network.model import (
    DTYPES,  # noqa: E402
    build_model,  # noqa: E402
)
from rsnn_bfd.network.readout import predict, readout_loss  # noqa: E402
from rsnn_bfd.training.batches import epoch_batches, stack_batch  # noqa: E402
from rsnn_bfd.training.data import load_datasets  # noqa: E402
from rsnn_bfd.training.step import make_optimizer  # noqa: E402


@dataclass
class DiagnoseConfig(SpikingConfig):
    """The spiking training flags, with a small overfitting set-up as the default."""
    out: str = with_default("out", "runs/diagnose")
    epochs: int = with_default("epochs", 30)
    max_train_samples: int = with_default("max_train_samples", 24)


def _groups(model) -> dict[str, list[torch.nn.Parameter]]:
    return {
        "encoder": list(model.encoder.parameters()),
        "thalamus_input": list(model.thalamus_input.parameters()),
        "thalamus_tau": [model.thal_tau_m, model.thal_tau_adp],
        "tau_m": [model.tau_m],
        "tau_adp": [model.tau_adp],
        "readout": list(model.readout.parameters()),
    }


def _norm(params) -> float:
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params
                                if p.grad is not None)))


def gradient_norms(model) -> dict[str, float]:
    """L2 norms of the current gradients, per group and per postsynaptic population."""
    out = {name: _norm(ps) for name, ps in _groups(model).items()}
    names = model.anatomy.names
    off = model.population_offsets
    g_rec, g_th = model.recurrent.weight.grad, model.thalamocortical.weight.grad
    for i, name in enumerate(names):
        lo, hi = off[i], off[i + 1]
        out[f"recurrent_to_{name}"] = float(g_rec[lo:hi].norm()) if g_rec is not None else 0.0
        out[f"thalamic_to_{name}"] = float(g_th[lo:hi].norm()) if g_th is not None else 0.0
    out["recurrent"] = float(g_rec.norm()) if g_rec is not None else 0.0
    out["thalamocortical"] = float(g_th.norm()) if g_th is not None else 0.0
    return out


def input_statistics(dataset, indices) -> dict:
    """Sweep-0 spike probabilities of the spiking input: how much of it is touched, how hard."""
    if not hasattr(dataset, "probs"):
        return {}
    p = dataset.probs[indices][:, :, 0]                 # (n, 2, 110, 93)
    floor = p.amin()
    touched = p > floor * 1.01
    return {"touched_fraction": float(touched.float().mean()),
            "touched_spike_prob": float(p[touched].mean()) if touched.any() else 0.0,
            "mean_spike_prob": float(p.mean())}


@torch.no_grad()
def recorded_statistics(model, x, y, loss_kind: str) -> dict:
    """Rates per population, readout saturation and the loss / accuracy after the updates."""
    model.eval()
    out = model(x, record_spikes=True)
    model.train()
    spikes, thal = out.spikes, out.thal_spikes          # (T, B, 4218), (T, B, 200)
    T = x.shape[3]
    off = model.population_offsets
    rates = {f"rate_{n}": float(spikes[..., off[i]:off[i + 1]].mean())
             for i, n in enumerate(model.anatomy.names)}
    prob = torch.softmax(out.logits, -1)                 # (T-1, B, 3)
    mean_prob = out.output / max(T - 1, 1)
    return {"loss_after": float(readout_loss(out, y, loss_kind)),
            "acc_after": float((predict(out, loss_kind) == y).float().mean()),
            "rate_thalamus": float(thal.mean()), "rate_cortex": float(spikes.mean()),
            **rates,
            "softmax_max": float(prob.amax(-1).mean()),
            "saturated_steps": float((prob.amax(-1) > 0.99).float().mean()),
            "confidently_wrong": float((mean_prob.gather(1, y[:, None]) < 0.05).float().mean()),
            "logit_spread": float((out.logits.amax(-1) - out.logits.amin(-1)).mean())}


def diagnose(cfg: DiagnoseConfig, log=print) -> list[dict]:
    cfg.validate()
    out = check_writable_dir(cfg.out)
    device = select_device(cfg.device)
    train_set, _ = load_datasets(cfg, log=log)
    n = cfg.max_train_samples or len(train_set)
    idx = list(range(min(n, len(train_set))))
    x, y = stack_batch(train_set, idx, device)
    model = build_model(cfg.model_config(), device=device, dtype=DTYPES[cfg.dtype],
                        engine=cfg.engine)
    optimizer, scheduler = make_optimizer(model, cfg)
    T = x.shape[3]

    # keep the gradient that reaches the thalamic spikes
    thal_grads = []
    thalamus = model.thalamus

    def thalamus_with_grad(*args, **kwargs):
        s = thalamus(*args, **kwargs)
        if s.requires_grad:
            s.register_hook(lambda g: thal_grads.append(g.detach().double().pow(2).sum((1, 2)).sqrt()))
        return s

    model.thalamus = thalamus_with_grad
    records = [{"epoch": 0, "n_samples": len(idx), "T": T, **input_statistics(train_set, idx),
                **recorded_statistics(model, x, y, cfg.loss)}]
    log(json.dumps(records[0]))
    for epoch in range(cfg.epochs):
        t0 = time.time()
        norms, loss_sum, correct = [], 0.0, 0.0
        for batch in epoch_batches(list(range(len(idx))), cfg.batch_size, cfg.seed, epoch):
            xb, yb = x[batch], y[batch]
            result = model(xb)
            loss = readout_loss(result, yb, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(gradient_norms(model))
            optimizer.step()
            model.constrain_()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((predict(result, cfg.loss).detach() == yb).sum())
        scheduler.step()
        g_time = torch.stack(thal_grads).mean(0).numpy()
        thal_grads.clear()
        windows = [float(w.mean()) for w in np.array_split(g_time, 10)]
        rec = {"epoch": epoch + 1, "loss": loss_sum / len(idx), "train_acc": correct / len(idx),
               **{f"grad_{k}": float(np.mean([nm[k] for nm in norms])) for k in norms[0]},
               "grad_thal_time": windows, **recorded_statistics(model, x, y, cfg.loss),
               "seconds": time.time() - t0}
        records.append(rec)
        log(f"epoch {epoch + 1}: loss {rec['loss']:.4f} acc {rec['train_acc']:.3f} -> "
            f"after {rec['acc_after']:.3f}; rate {rec['rate_cortex']:.4f}, thal "
            f"{rec['rate_thalamus']:.4f}; softmax max {rec['softmax_max']:.3f}, saturated "
            f"{rec['saturated_steps']:.3f}, wrong {rec['confidently_wrong']:.2f}; grad rec "
            f"{rec['grad_recurrent']:.2e} readout {rec['grad_readout']:.2e} enc "
            f"{rec['grad_encoder']:.2e}; thal(t) {windows[0]:.1e}..{windows[-1]:.1e} "
            f"({rec['seconds']:.0f} s)")
        write(records, out, cfg)
    return records


def write(records: list[dict], out: Path, cfg) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), out / "diagnostics.jsonl")
    scalar = [k for k, v in records[-1].items() if isinstance(v, (int, float))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=scalar, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(records[1:])
    atomic_write_text(buf.getvalue(), out / "diagnostics.csv")
    plot(records, out / "diagnostics.png", f"{cfg.encoder}, loss {cfg.loss}, "
         f"{records[0]['n_samples']} samples")


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = records[1:]
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
    ax[0].plot(ep, [r["loss"] for r in rows], label="loss")
    ax[0].plot(ep, [r["train_acc"] for r in rows], label="train acc")
    ax[0].plot(ep, [r["saturated_steps"] for r in rows], label="saturated steps")
    ax[0].plot(ep, [r["confidently_wrong"] for r in rows], label="confidently wrong")
    ax[0].set(xlabel="epoch", title="fit and readout saturation")
    for k in ("rate_thalamus", "rate_cortex") + tuple(k for k in rows[0] if k.startswith("rate_L")):
        ax[1].plot(ep, [r[k] for r in rows], label=k[5:], lw=2 if k in ("rate_thalamus", "rate_cortex") else 0.8)
    ax[1].set(xlabel="epoch", ylabel="spikes / neuron / step", title="firing rates", yscale="log")
    for k in ("encoder", "thalamus_input", "thalamocortical", "recurrent", "tau_m", "readout"):
        ax[2].plot(ep, [max(r[f"grad_{k}"], 1e-30) for r in rows], label=k)
    ax[2].set(xlabel="epoch", title="gradient norm", yscale="log")
    for r in rows[:: max(1, len(rows) // 5)]:
        ax[3].plot(np.arange(10) + 0.5, np.maximum(r["grad_thal_time"], 1e-30), label=f"epoch {r['epoch']}")
    ax[3].set(xlabel="tenth of the sequence", title="|dL/d thalamic spikes| through time", yscale="log")
    for a in ax:
        a.legend(fontsize=6)
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    cfg, _ = parse_config(DiagnoseConfig, argv, description=__doc__.split("\n")[0])
    diagnose(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
