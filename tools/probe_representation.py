"""What a trained network's spikes hold: linear read-outs fitted to the recorded spikes.

    python tools/probe_representation.py --checkpoint runs/spiking/best.pth --out runs/probe

Separates "the network cannot represent the classes" from "the readout does not fit them"
and from "fitting does not generalise". The network runs (eval, no grad) on the training
and test sets of its run (sweep 0, the run's spike seed and features, batches of the run's
size) and its spikes are recorded: the thalamus (200 units) and the readout neurons (the
3,606 excitatory cortical neurons). Then, on these fixed spikes:

* ``logreg``: multinomial logistic regression on each group's firing rates pooled in
  ``bins`` equal time windows (features standardised on the training set; L-BFGS,
  penalty ``l2 * |W|^2``), for every bins x l2: train and test accuracy;
* ``readout``: the model's own readout (Linear 3606 -> 128 -> 3 per step), starting from the
  checkpoint's weights, retrained alone with Adam on the run's loss for ``readout_epochs``
  (batches of 32, every ``stride``-th step of the recorded spikes), per learning rate in
  ``readout_lr``: train and test accuracy (the run's decision) every 5 epochs;
* ``class_rates``: mean thalamic and readout-neuron rate per class.

Writes ``probe.json`` and ``probe.csv`` (one row per fit) to ``--out``.
"""
from __future__ import annotations

import copy
import csv
import io
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rsnn_bfd.cli import flag, parse_config, require, run_cli  # noqa: E402
from rsnn_bfd.common import make_generator, select_device  # noqa: E402
from rsnn_bfd.writing import atomic_write_json, atomic_write_text, check_writable_dir  # noqa: E402
from rsnn_bfd.data.datasets import datasets_of_run  # noqa: E402
from rsnn_bfd.io.checkpoint import load_checkpoint  # noqa: E402
from rsnn_bfd.network.model import RSNNOutput  # noqa: E402
from rsnn_bfd.network.readout import predict, readout_loss  # noqa: E402


@dataclass
class ProbeConfig:
    """Settings of ``tools/probe_representation.py`` (each is a ``--flag``)."""
    checkpoint: str = flag("", "checkpoint of a training run (e.g. runs/spiking/best.pth)")
    data_dir: str = flag("", "folder with the data files (default: the run's --data-dir)")
    out: str = flag("runs/probe", "output folder")
    bins: str = flag("1,5,11", "time windows of the pooled rates, comma-separated")
    l2: str = flag("0.01,0.001,0.0001", "penalties of the logistic regression, comma-separated")
    readout_lr: str = flag("0.001,0.01", "Adam learning rates of the readout refit")
    readout_epochs: int = flag(40, "epochs of the readout refit (0: skip it)")
    stride: int = flag(5, "the readout refit uses every stride-th recorded step")
    max_train_samples: int = flag(0, "use only the first N training samples (0: all)")
    max_test_samples: int = flag(0, "use only the first N test samples (0: all)")
    n_steps: int = flag(0, "truncate sequences to T steps (0: as in training)")
    device: str = flag("auto", "auto, cpu, cuda or cuda:N")
    seed: int = flag(0, "order of the readout refit's batches")
    progress: bool = flag(True, "tqdm progress bars while recording and refitting")

    def lists(self):
        try:
            bins = [int(v) for v in self.bins.split(",")]
            l2 = [float(v) for v in self.l2.split(",")]
            lrs = [float(v) for v in self.readout_lr.split(",")]
        except ValueError as err:
            raise ValueError(f"--bins, --l2 and --readout-lr are comma-separated numbers ({err})") \
                from None
        require([(bool(self.checkpoint), "--checkpoint is required (e.g. runs/spiking/best.pth)"),
                 (all(b >= 1 for b in bins), f"--bins must be >= 1, got {self.bins}"),
                 (all(v >= 0 for v in l2), f"--l2 must be >= 0, got {self.l2}"),
                 (all(v > 0 for v in lrs), f"--readout-lr must be > 0, got {self.readout_lr}"),
                 (self.readout_epochs >= 0, f"--readout-epochs must be >= 0, got {self.readout_epochs}"),
                 (self.stride >= 1, f"--stride must be >= 1, got {self.stride}"),
                 (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
                 (min(self.max_train_samples, self.max_test_samples, self.n_steps) >= 0,
                  "--max-train-samples, --max-test-samples and --n-steps must be >= 0")])
        return bins, l2, lrs


@torch.no_grad()
def record(model, dataset, n: int, batch_size: int, device, progress: bool = False,
           desc: str = "record"):
    """Spikes of the first ``n`` samples: thalamus (n, T, 200) and readout neurons
    (n, T, 3606), both uint8, and the labels (n,)."""
    thal, cortex, labels = [], [], []
    for s in _bar(range(0, n, batch_size), progress, desc):
        items = [dataset[i] for i in range(s, min(s + batch_size, n))]
        out = model(torch.stack([x for x, _ in items]).to(device), record_spikes=True)
        thal.append(out.thal_spikes.permute(1, 0, 2).to(torch.uint8).cpu())
        cortex.append(out.spikes[:, :, model.readout_index].permute(1, 0, 2).to(torch.uint8).cpu())
        labels.append(torch.stack([torch.as_tensor(y) for _, y in items]))
    return torch.cat(thal), torch.cat(cortex), torch.cat(labels).long()


def _bar(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def pooled(spikes: torch.Tensor, bins: int) -> torch.Tensor:
    """(n, T, units) -> rates in ``bins`` equal windows, (n, bins * units) (the last
    T mod bins steps dropped)."""
    n, T, units = spikes.shape
    w = T // bins
    return spikes[:, :w * bins].float().reshape(n, bins, w, units).mean(2).reshape(n, -1)


def logistic_regression(x_train, y_train, x_test, y_test, l2: float, iters: int = 300):
    """Train / test accuracy of an L2-penalised multinomial logistic regression (L-BFGS)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(x_train.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ w + b, y_train) + l2 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return (float(((x_train @ w + b).argmax(1) == y_train).float().mean()),
                float(((x_test @ w + b).argmax(1) == y_test).float().mean()))


def refit_readout(readout, train, test, loss: str, lr: float, epochs: int, seed: int,
                  progress: bool = False):
    """Retrain ``readout`` (a copy) alone on recorded spikes (n, T', 3606); returns rows
    ``{"epoch", "train_acc", "test_acc"}`` every 5 epochs (and before training)."""
    readout = copy.deepcopy(readout).cpu().float()
    opt = torch.optim.Adam(readout.parameters(), lr=lr)
    g = make_generator(seed)

    def result(s):   # the run's loss and decision read an RSNNOutput's logits / output
        logits = readout(s.float()).transpose(0, 1)           # (T', n, 3)
        return RSNNOutput(torch.softmax(logits, -1).sum(0), logits=logits)

    def accuracy(s, y):
        with torch.no_grad():
            return float((predict(result(s), loss) == y).float().mean())
    rows = [{"epoch": 0, "train_acc": accuracy(*train), "test_acc": accuracy(*test)}]
    for epoch in _bar(range(1, epochs + 1), progress, f"readout refit, lr {lr:g}"):
        for idx in torch.randperm(len(train[1]), generator=g).split(32):
            batch_loss = readout_loss(result(train[0][idx]), train[1][idx], loss)
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
        if epoch % 5 == 0 or epoch == epochs:
            rows.append({"epoch": epoch, "train_acc": accuracy(*train),
                         "test_acc": accuracy(*test)})
    return rows


def probe(cfg: ProbeConfig, log=print) -> dict:
    """Record, fit and write (see the module docstring). Returns the JSON summary."""
    bins, l2s, lrs = cfg.lists()
    device = select_device(cfg.device)
    model, ckpt = load_checkpoint(cfg.checkpoint, device)
    out = check_writable_dir(cfg.out)
    tc = ckpt.get("train_config") or {}
    train_set, test_set = datasets_of_run(model.config.encoder, tc, data_dir=cfg.data_dir or None,
                                          n_steps=cfg.n_steps or None)
    loss = tc.get("loss", "published")
    batch_size = int(tc.get("batch_size") or 32)
    sizes = [min(len(d), m) if m else len(d) for d, m in
             ((train_set, cfg.max_train_samples), (test_set, cfg.max_test_samples))]
    log(f"recording {sizes[0]} training and {sizes[1]} test samples from {cfg.checkpoint}")
    th_tr, cx_tr, y_tr = record(model, train_set, sizes[0], batch_size, device, cfg.progress,
                                "record train")
    th_te, cx_te, y_te = record(model, test_set, sizes[1], batch_size, device, cfg.progress,
                                "record test")

    rows = []
    for group, a, b in (("thalamus", th_tr, th_te), ("readout_neurons", cx_tr, cx_te)):
        for k in bins:
            xa, xb = pooled(a, k), pooled(b, k)
            for l2 in l2s:
                tr, te = logistic_regression(xa, y_tr, xb, y_te, l2)
                rows.append({"fit": "logreg", "group": group, "bins": k, "l2": l2, "lr": "",
                             "epoch": "", "train_acc": tr, "test_acc": te})
                log(f"  logreg {group:16s} bins {k:3d} l2 {l2:g}: train {tr:.3f}, test {te:.3f}")
    if cfg.readout_epochs:
        # the readout reads steps 1..T-1 (step 0 holds the initial state, never read out)
        train = (cx_tr[:, 1::cfg.stride], y_tr)
        test = (cx_te[:, 1::cfg.stride], y_te)
        for lr in lrs:
            fit = refit_readout(model.readout, train, test, loss, lr,
                                cfg.readout_epochs, cfg.seed, cfg.progress)
            rows += [{"fit": "readout", "group": "readout_neurons", "bins": "", "l2": "",
                      "lr": lr, **r} for r in fit]
            log(f"  readout refit lr {lr:g}: train / test {fit[0]['train_acc']:.3f} / "
                f"{fit[0]['test_acc']:.3f} -> {fit[-1]['train_acc']:.3f} / "
                f"{fit[-1]['test_acc']:.3f} after {cfg.readout_epochs} epochs")
    class_rates = {int(c): {"thalamus": float(th_tr[y_tr == c].float().mean()),
                            "readout_neurons": float(cx_tr[y_tr == c].float().mean())}
                   for c in y_tr.unique()}
    summary = {"checkpoint": str(cfg.checkpoint), "loss": loss, "n_train": sizes[0],
               "n_test": sizes[1], "config": asdict(cfg), "class_rates": class_rates,
               "fits": rows}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / "probe.csv")
    atomic_write_json(summary, out / "probe.json")
    log(f"wrote {out / 'probe.json'}, {out / 'probe.csv'}")
    return summary


def main(argv=None) -> int:
    cfg, _ = parse_config(ProbeConfig, argv, description=__doc__.splitlines()[0])
    probe(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
