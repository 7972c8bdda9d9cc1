"""The analyses' figures and files: each ``run_*`` records what it needs, computes the
numbers and writes a PNG (Agg backend) plus the numbers behind it (CSV / JSON), atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rsnn_bfd.writing import atomic_path  # noqa: E402

from .recording import (  # noqa: E402
    balanced_indices,
    constant_input_rates,
    cv_grid,
    dataset_labels,
    model_degrees,
    record_spikes,
    training_comparison,
    untrained_like,
)
from .statistics import (  # noqa: E402
    _kde,
    anova_oneway,
    class_proportions,
    group_rates,
    minmax,
    pearson,
    selectivity_summary,
    summary_stats,
    ternary_xy,
)

CLASS_NAMES_DEFAULT = ("helmet", "box", "plane")
E_COLOR, I_COLOR = "#d62728", "#1f77b4"     # excitatory red, inhibitory blue
INIT_COLOR = "0.45"
DPI = 100


def class_names() -> tuple:
    try:
        from rsnn_bfd.data.files import CLASS_NAMES
        return tuple(CLASS_NAMES)
    except ImportError:  # pragma: no cover - the dataset module ships with the project
        return CLASS_NAMES_DEFAULT


def _save_fig(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def write_csv(path, header, rows) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(obj, path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return Path(path)


def _blocks(anatomy):
    """Contiguous runs of populations with the same (layer, type): [(label, start, stop, type)]."""
    out = []
    for p in anatomy.populations:
        label = f"{p.layer} {p.type}"
        if out and out[-1][0] == label and out[-1][2] == p.offset:
            out[-1] = (label, out[-1][1], p.offset + p.size, p.type)
        else:
            out.append((label, p.offset, p.offset + p.size, p.type))
    return out


def _layer_boundaries(anatomy) -> list[tuple[int, str, str]]:
    """[(index, layer below, layer above)] where the layer changes along the neuron index."""
    pops = anatomy.populations
    return [(pops[i].offset, pops[i - 1].layer, pops[i].layer)
            for i in range(1, len(pops)) if pops[i].layer != pops[i - 1].layer]


def plot_ternary(ax, proportions, selective, title, names):
    h = math.sqrt(3) / 2
    ax.plot([0, 1, 0.5, 0], [0, 0, h, 0], color="k", lw=1)
    for f in (0.25, 0.5, 0.75):          # guide lines of constant proportion
        for a, b in (((f, 0), (f / 2, f * h)), ((1 - f, 0), (1 - f / 2, f * h)),
                     ((f / 2, f * h), (1 - f / 2, f * h))):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.85", lw=0.6, zorder=0)
    ok = np.all(np.isfinite(proportions), axis=1)
    x, y = ternary_xy(np.nan_to_num(proportions))
    rest = ok & ~selective
    sel = ok & selective
    ax.scatter(x[rest], y[rest], s=6, color="0.6", alpha=0.5, lw=0,
               label=f"not selective ({int(rest.sum())})")
    ax.scatter(x[sel], y[sel], s=9, color="#e6550d", alpha=0.8, lw=0,
               label=f"selective, p < alpha ({int(sel.sum())})")
    ax.text(-0.03, -0.03, names[0], ha="right", va="top", fontsize=10)
    ax.text(1.03, -0.03, names[1], ha="left", va="top", fontsize=10)
    ax.text(0.5, h + 0.03, names[2], ha="center", va="bottom", fontsize=10)
    ax.set_xlim(-0.22, 1.22)
    ax.set_ylim(-0.2, h + 0.14)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    n_silent = int((~ok).sum())
    ax.legend(loc="upper left", fontsize=7, frameon=False, markerscale=2.5,
              title=f"silent, not shown: {n_silent}", title_fontsize=7)


def run_anova(model, dataset, out, alpha: float = 0.001, batch_size: int = 16, device="cpu",
              max_samples: Optional[int] = None, engine: Optional[str] = None,
              initial_model=None, progress: bool = True) -> dict:
    """Selectivity of the trained and the untrained network (same seed) on ``dataset``."""
    out = Path(out)
    names = class_names()
    anatomy = model.anatomy
    initial_model = initial_model if initial_model is not None else untrained_like(model)
    results = {}
    for key, net in (("untrained", initial_model), ("trained", model)):
        rec = record_spikes(net, dataset, batch_size, device, max_samples, engine=engine,
                            progress=progress)
        F, p = anova_oneway(rec["counts"], rec["labels"])
        results[key] = dict(F=F, p=p, props=class_proportions(rec["counts"], rec["labels"],
                                                              len(names)),
                            summary=selectivity_summary(p, anatomy, alpha),
                            n_samples=len(rec["labels"]),
                            mean_rate=float(rec["counts"].mean()))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, key in zip(axes, ("untrained", "trained")):
        r = results[key]
        s = r["summary"]
        plot_ternary(ax, r["props"], r["p"] < alpha,
                     f"{key}: {s['selective']} / {s['total']} selective "
                     f"({100 * s['fraction']:.1f} %)", names)
    same, trained_fields = training_comparison(model, initial_model,
                                               "weights and time constants")
    fig.suptitle(f"Firing selectivity (one-way ANOVA across classes, p < {alpha:g}; "
                 f"{results['trained']['n_samples']} samples)\nposition = share of a neuron's "
                 "mean spike count in each class" + (f"\n{same}" if same else ""), fontsize=10)
    fig.tight_layout()
    files = [_save_fig(fig, out / "anova_selectivity.png")]
    summary = dict(alpha=alpha, classes=list(names),
                   n_samples=results["trained"]["n_samples"],
                   note="p = 1 for neurons with zero variance of their counts (e.g. silent)",
                   **trained_fields,
                   **{k: dict(v["summary"], mean_count_per_neuron=v["mean_rate"])
                      for k, v in results.items()})
    files.append(write_json(summary, out / "anova_selectivity.json"))
    pop = anatomy.population_of_neuron
    rows = []
    for j in range(anatomy.n_neurons):
        pp = anatomy.populations[pop[j]]
        row = [j, pp.name, pp.layer, pp.type]
        for key in ("trained", "untrained"):
            r = results[key]
            row += [r["F"][j], r["p"][j], int(r["p"][j] < alpha), *r["props"][j]]
        rows.append(row)
    header = ["neuron", "population", "layer", "type"]
    for key in ("trained", "untrained"):
        header += [f"F_{key}", f"p_{key}", f"selective_{key}",
                   *[f"prop_{c}_{key}" for c in names]]
    files.append(write_csv(out / "anova_neurons.csv", header, rows))
    return dict(summary=summary, files=files, results=results)


def plot_raster(spikes, anatomy, title="", sample_info=""):
    s = np.asarray(spikes)
    T = s.shape[0]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                  gridspec_kw=dict(height_ratios=[3, 1.2]))
    t, j = np.nonzero(s)
    exc = anatomy.pre_sign[j] > 0
    ms = max(0.3, min(2.0, 300.0 / max(T, 1)))
    ax.scatter(t[exc], j[exc], s=ms, marker="|", color=E_COLOR, lw=0.5, label="excitatory",
               rasterized=True)
    ax.scatter(t[~exc], j[~exc], s=ms, marker="|", color=I_COLOR, lw=0.5, label="inhibitory",
               rasterized=True)
    for b, below, above in _layer_boundaries(anatomy):
        ax.axhline(b - 0.5, color="k", lw=1.2, ls="--")
        ax.text(1.005, b, f"{above}\n{below}", transform=ax.get_yaxis_transform(),
                va="center", ha="left", fontsize=8)
    for label, lo, hi, _ in _blocks(anatomy)[1:]:
        ax.axhline(lo - 0.5, color="0.7", lw=0.5)
    blocks = _blocks(anatomy)
    ax.set_yticks([(lo + hi) / 2 for _, lo, hi, _ in blocks])
    ax.set_yticklabels([lab for lab, *_ in blocks])
    ax.set_ylim(-0.5, anatomy.n_neurons - 0.5)
    ax.set_ylabel("neurons (by population)")
    ax.set_title(title, fontsize=10, loc="left")
    # above the axes, off the spikes, with markers large enough to see
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="none", marker="s", markersize=7, color=c, label=lab)
               for c, lab in ((E_COLOR, "excitatory"), (I_COLOR, "inhibitory"))]
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2,
              fontsize=8, frameon=False, borderaxespad=0.2)
    rates = group_rates(s, anatomy)
    styles = {"E": "-", "I": "--"}
    colors = {}
    for k in rates:
        layer, typ = k.split()
        base = E_COLOR if typ == "E" else I_COLOR
        colors[k] = base if layer == anatomy.populations[0].layer else (
            "#8c1a1a" if typ == "E" else "#0b3d66")
        ax2.plot(np.arange(T), rates[k], styles[typ], color=colors[k], lw=1.1, label=k)
    ax2.set_xlabel("time step")
    ax2.set_ylabel("rate (spikes / neuron / step)")
    ax2.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=4,
               frameon=False, borderaxespad=0.2)
    ax2.set_xlim(-0.5, T - 0.5)
    if sample_info:
        ax2.set_title(sample_info, fontsize=9, loc="left")
    fig.tight_layout()
    return fig, rates


def run_raster(model, dataset, out, sample: int = 0, device="cpu", engine=None,
               progress: bool = True) -> dict:
    out = Path(out)
    if not 0 <= sample < len(dataset):
        raise ValueError(f"--sample {sample} is not in the test set (0..{len(dataset) - 1})")
    rec = record_spikes(model, dataset, 1, device, indices=[sample], keep_trains=True,
                        engine=engine, progress=progress)
    spikes = rec["trains"][0]
    label = int(rec["labels"][0])
    names = class_names()
    fig, rates = plot_raster(spikes, model.anatomy,
                             title=f"Spike raster, sample {sample} (class: {names[label]})",
                             sample_info="population firing rate")
    files = [_save_fig(fig, out / "raster.png")]
    keys = list(rates)
    files.append(write_csv(out / "raster_rates.csv", ["t", *keys],
                           [[t, *[rates[k][t] for k in keys]] for t in range(spikes.shape[0])]))
    info = dict(sample=sample, label=label, class_name=names[label], n_steps=spikes.shape[0],
                mean_rate={k: float(v.mean()) for k, v in rates.items()},
                layer_boundaries=[b for b, *_ in _layer_boundaries(model.anatomy)])
    files.append(write_json(info, out / "raster.json"))
    return dict(info=info, files=files, rates=rates, spikes=spikes)


def plot_tau_kde(trained: dict, initial: dict, anatomy, note: str = ""):
    """Ridge plot: per population (rows) the KDE of tau_m and tau_adp (columns); ``note``: a
    second line of the title."""
    pops = anatomy.populations
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.42 * len(pops) + 1.8), sharey=True)
    for ax, name, sym in zip(axes, ("tau_m", "tau_adp"), (r"$\tau_m$", r"$\tau_{adp}$")):
        allv = np.concatenate([trained[name], initial[name]])
        lo, hi = allv.min(), allv.max()
        pad = 0.08 * (hi - lo) + 1e-3
        grid = np.linspace(lo - pad, hi + pad, 400)
        for i, p in enumerate(pops):
            y0 = len(pops) - 1 - i
            col = E_COLOR if p.excitatory else I_COLOR
            d_tr = _kde(trained[name][p.neurons], grid)
            d_in = _kde(initial[name][p.neurons], grid)
            scale = 0.9 / max(d_tr.max(), d_in.max(), 1e-12)
            ax.fill_between(grid, y0, y0 + d_tr * scale, color=col, alpha=0.45, lw=0)
            ax.plot(grid, y0 + d_tr * scale, color=col, lw=1)
            ax.plot(grid, y0 + d_in * scale, color="k", lw=1.1, ls=(0, (3, 2)), zorder=3)
        ax.set_xlabel(f"{sym} (time steps)")
        ax.set_title(f"{sym}: trained (filled) vs initial (dashed)", fontsize=10)
        ax.set_xlim(grid[0], grid[-1])
    axes[0].set_yticks([len(pops) - 1 - i + 0.3 for i in range(len(pops))])
    axes[0].set_yticklabels([f"{p.layer} {p.name}" for p in pops], fontsize=8)
    axes[0].set_ylim(-0.2, len(pops) + 0.1)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=E_COLOR, alpha=0.5, label="trained, excitatory"),
               Patch(color=I_COLOR, alpha=0.5, label="trained, inhibitory"),
               Line2D([], [], color="k", ls=(0, (3, 2)), label="initial")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Membrane and adaptation time constants per population "
                 "(densities scaled to their peak)" + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_constant_input(anatomy, reference, trained, initial, r_tr, r_in, steps, current,
                        note: str = ""):
    names = [p.name for p in anatomy.populations]
    x = np.arange(len(names))
    ref_n, tr_n = minmax(reference), minmax(trained)
    fig, ax = plt.subplots(figsize=(10, 4.6))
    w = 0.27
    ax.bar(x - w, ref_n, w, color="0.55", label="reference rate (Izhikevich subtypes)")
    ax.bar(x, tr_n, w, color="#e6550d", label=f"trained model: r = {r_tr[0]:.2f}, "
                                              f"p = {r_tr[1]:.2g}")
    if initial is not None:
        ax.bar(x + w, minmax(initial), w, color="#9ecae1",
               label=f"initial model: r = {r_in[0]:.2f}, p = {r_in[1]:.2g}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{p.layer} {n}" for n, p in zip(names, anatomy.populations)],
                       rotation=35, ha="right", fontsize=8, rotation_mode="anchor")
    ax.set_ylabel("firing rate (min-max normalised)")
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(loc="upper center", fontsize=8, ncol=3, framealpha=0.9)
    ax.set_title(f"Dynamic gradient: rate of each subtype under constant input "
                 f"{current:g} for {steps} steps, isolated neurons\n"
                 f"Pearson r of trained vs reference = {r_tr[0]:.3f} (p = {r_tr[1]:.3g})"
                 + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout()
    return fig


def run_dynamics(model, out, initial_model=None, steps: int = 550, current: float = 1.0) -> dict:
    out = Path(out)
    anatomy = model.anatomy
    initial_model = initial_model if initial_model is not None else untrained_like(model)
    tr = {k: getattr(model, k).detach().cpu().double().numpy() for k in ("tau_m", "tau_adp")}
    ini = {k: getattr(initial_model, k).detach().cpu().double().numpy()
           for k in ("tau_m", "tau_adp")}
    same, trained_fields = training_comparison(model, initial_model, "time constants",
                                               ("tau_m", "tau_adp"))
    files = [_save_fig(plot_tau_kde(tr, ini, anatomy, same), out / "dynamics_tau.png")]
    pop = anatomy.population_of_neuron
    files.append(write_csv(out / "dynamics_tau.csv",
                           ["neuron", "population", "tau_m_initial", "tau_m_trained",
                            "tau_adp_initial", "tau_adp_trained"],
                           [[j, anatomy.populations[pop[j]].name, ini["tau_m"][j],
                             tr["tau_m"][j], ini["tau_adp"][j], tr["tau_adp"][j]]
                            for j in range(anatomy.n_neurons)]))
    _, rate_tr = constant_input_rates(model, steps, current)
    _, rate_in = constant_input_rates(initial_model, steps, current)
    ref = np.array([p.reference_rate for p in anatomy.populations])
    r_tr = pearson(minmax(rate_tr), minmax(ref))
    r_in = pearson(minmax(rate_in), minmax(ref))
    files.append(_save_fig(plot_constant_input(anatomy, ref, rate_tr, rate_in, r_tr, r_in,
                                               steps, current, same),
                           out / "dynamics_constant_input.png"))
    rows = [[p.name, p.layer, p.type, ref[i], rate_tr[i], rate_in[i], minmax(ref)[i],
             minmax(rate_tr)[i], minmax(rate_in)[i]] for i, p in enumerate(anatomy.populations)]
    files.append(write_csv(out / "dynamics_constant_input.csv",
                           ["population", "layer", "type", "reference_rate", "rate_trained",
                            "rate_initial", "reference_minmax", "trained_minmax",
                            "initial_minmax"], rows))
    summary = dict(steps=steps, current=current,
                   pearson_trained=dict(r=r_tr[0], p=r_tr[1]),
                   pearson_initial=dict(r=r_in[0], p=r_in[1]),
                   note="each neuron alone (no recurrent/thalamic input), from rest, "
                        "neuron.alif_step with its own tau_m/tau_adp; rates in spikes/step",
                   **trained_fields)
    files.append(write_json(summary, out / "dynamics_constant_input.json"))
    return dict(summary=summary, files=files, rates_trained=rate_tr, rates_initial=rate_in)


def run_degree(model, out, initial_model=None) -> dict:
    out = Path(out)
    anatomy = model.anatomy
    initial_model = initial_model if initial_model is not None else untrained_like(model)
    deg = {"initial": model_degrees(initial_model), "trained": model_degrees(model)}
    stats_ = {k: {"in_degree": summary_stats(v[0]), "out_degree": summary_stats(v[1]),
                  "weight_sum": float(v[0].sum())} for k, v in deg.items()}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, d, name in zip(axes, (0, 1), ("in-degree", "out-degree")):
        allv = np.concatenate([deg["initial"][d], deg["trained"][d]])
        bins = np.linspace(allv.min(), allv.max(), 60) if np.ptp(allv) > 0 else 10
        for key, col in (("initial", INIT_COLOR), ("trained", "#e6550d")):
            v = deg[key][d]
            st = stats_[key][name.replace("-", "_")]
            ax.hist(v, bins=bins, histtype="stepfilled" if key == "initial" else "step",
                    color=col, alpha=0.45 if key == "initial" else 1, lw=1.4,
                    label=f"{key}: mean {st['mean']:.2f}, std {st['std']:.2f}, "
                          f"skew {st['skewness']:.2f}")
        ax.set_xlabel(f"weighted {name} (sum of signed effective weights)")
        ax.set_ylabel("number of neurons")
        ax.set_yscale("log")
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        ax.set_title(f"weighted {name}", fontsize=10)
    same, trained_fields = training_comparison(model, initial_model, "recurrent weights",
                                               ("recurrent.weight",))
    fig.suptitle(f"Weighted degree distributions of the {anatomy.n_neurons} x "
                 f"{anatomy.n_neurons} recurrent network (E > 0, I < 0)"
                 + (f"\n{same}" if same else ""), fontsize=10)
    fig.tight_layout()
    files = [_save_fig(fig, out / "degree_distributions.png")]
    files.append(write_json(dict(stats_, note="W[post, pre] = sign(pre) * weight * mask; "
                                 "in-degree = row sum, out-degree = column sum",
                                 **trained_fields),
                            out / "degree.json"))
    pop = anatomy.population_of_neuron
    files.append(write_csv(out / "degree.csv",
                           ["neuron", "population", "in_initial", "out_initial",
                            "in_trained", "out_trained"],
                           [[j, anatomy.populations[pop[j]].name, deg["initial"][0][j],
                             deg["initial"][1][j], deg["trained"][0][j], deg["trained"][1][j]]
                            for j in range(anatomy.n_neurons)]))
    return dict(stats=stats_, files=files, degrees=deg)


def plot_cv_grid(rows, w_values, b_values):
    keys = (("binned_cv", "binned-train CV (published \"CV\")"),
            ("isi_cv", "ISI CV (irregularity)"),
            ("mean_rate", "mean rate (spikes / neuron / step)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(b_values) + 3.2))
    for ax, (key, title) in zip(axes, keys):
        M = np.full((len(b_values), len(w_values)), np.nan)
        for r in rows:
            M[b_values.index(r["init_b"]), w_values.index(r["init_w"])] = r[key]
        im = ax.imshow(M, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(w_values)))
        ax.set_xticklabels([f"{w:g}" for w in w_values], fontsize=8,
                           rotation=45 if len(w_values) > 6 else 0)
        ax.set_yticks(range(len(b_values)))
        ax.set_yticklabels([f"{b:g}" for b in b_values], fontsize=8)
        ax.set_xlabel("init_w (initial weight scale)")
        ax.set_ylabel("init_b (baseline threshold)")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if M.size <= 80:
            finite = M[np.isfinite(M)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0
            for (i, j), v in np.ndenumerate(M):
                ax.text(j, i, "-" if not np.isfinite(v) else f"{v:.2g}", ha="center",
                        va="center", fontsize=7, color="w" if v < mid else "k")
    fig.suptitle("Untrained networks over the initialisation grid (CVs: mean over trains where "
                 "defined; '-': undefined, e.g. no train with 3+ spikes)", fontsize=10)
    fig.tight_layout()
    return fig


def run_cv(model_config: dict, dataset, out, w_values, b_values, n_samples: int = 8,
           batch_size: int = 16, engine: Optional[str] = None, workers: int = 1,
           progress: bool = True) -> dict:
    out = Path(out)
    idx = balanced_indices(dataset_labels(dataset), n_samples)
    x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx]).float()
    w_values, b_values = [float(v) for v in w_values], [float(v) for v in b_values]
    rows = cv_grid(model_config, x, w_values, b_values, batch_size, engine, workers, progress)
    keys = ["init_w", "init_b", "binned_cv", "isi_cv", "mean_rate", "fraction_silent",
            "fraction_isi_defined"]
    files = [write_csv(out / "cv_grid.csv", keys, [[r[k] for k in keys] for r in rows])]
    files.append(_save_fig(plot_cv_grid(rows, w_values, b_values), out / "cv_grid.png"))
    return dict(rows=rows, files=files, n_samples=len(idx))
