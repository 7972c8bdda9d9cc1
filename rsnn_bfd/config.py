"""The training configurations: every setting of a run, each a command-line flag.

:class:`TrainConfig` holds the paper's set-up as its defaults; :class:`SpikingConfig` and
:class:`RealValuedConfig` are the two published scripts' (``RSNN_bfd_SpikingBased.py``,
``RSNN_bfd_RealValued.py``). They sit below everything that reads them: the training loop,
the published-network reader, deprivation, the analyses and cross-validation.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from rsnn_bfd.cli import data_dir_check, flag, require, seed_check
from rsnn_bfd.data.encoding import REALVALUED_FEATURES, parse_sweeps
from rsnn_bfd.network.model import DTYPES, ENGINES, INIT_STATES, PAPER_INIT, ModelConfig
from rsnn_bfd.network.neuron import SURROGATE_SCALE, SURROGATE_SIGMA
from rsnn_bfd.network.readout import LOSSES

RATE_REG_OF = ("sample", "neuron")   # --rate-reg-of (rsnn_bfd.training.step.rate_penalty)


# Named sets of training settings (``--preset NAME``), per input encoding; flags given on
# the command line win, and the paper's set-up is no preset at all. Chosen on the validation
# fifth of fold 0 of the default dataset and of two datasets of other seeds (docs/RESULTS.md,
# "The fit recipe"). "fit": the anatomical network as initialised (thalamocortical weights
# 5x the published scale, at rest at t = 0), only its readout trained, on the standardised
# and centred rates of its excitatory neurons; trained along, the constrained network undid
# the readout's fit (the fit screen).
_FIT = {"loss": "mean-logit", "readout_norm": True, "readout_centre": True,
        "init_state": "zero", "init_w_thalamic": 0.3, "batch_size": 16, "lr": 0.003,
        "readout_epochs": -1}
# "whole": fit's network and readout trained together from the first epoch (recurrent and
# thalamocortical weights, time constants, encoder and thalamic input) with a surrogate 0.015
# wide and high (the published: 0.5), the readout's standardisation measured again after
# every epoch (the rates move), then the readout alone on the network as trained for the last
# 5 of 30 epochs; best.pth is the epoch of the best accuracy on a validation fifth of the
# training set (the later epochs can lose it). The lead of the whole-network screen, chosen
# on validation pooled over the folds of two datasets (docs/RESULTS.md, "Training the whole
# network: the screen").
_WHOLE = {**_FIT, "readout_epochs": 0, "readout_follow": True, "lr": 0.001, "batch_size": 32,
          "surrogate_sigma": 0.015, "surrogate_scale": 0.015, "epochs": 30, "readout_last": 5,
          "val_fraction": 0.2}
PRESETS = {
    # real-valued: the signed-log features (validation 0.77 against 0.59 with the published)
    "fit": {"spiking": _FIT, "realvalued": {**_FIT, "features": "signed-log"}},
    "whole": {"spiking": _WHOLE},   # screened on spike trains only
}
PRESET_SUMMARIES = {
    "fit": "trains only the readout, on the network as initialised",
    "whole": "trains the whole network with its readout, then the readout alone",
}


def _preset_help() -> str:
    def flags(values):
        return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                        for k, v in values.items())
    parts = []
    for name, by_encoder in PRESETS.items():
        for values in {flags(v): v for v in by_encoder.values()}.values():   # once per recipe
            encoders = ", ".join(e for e, v in by_encoder.items() if v == values)
            parts.append(f"{name} ({encoders}; {PRESET_SUMMARIES[name]}): {flags(values)}")
    return "; ".join(parts)


@dataclass
class TrainConfig:
    """Every training setting; each field is also a command-line flag (``--snake-case``)."""
    preset: str = flag("", "a named recipe that sets other flags' defaults (flags given "
                           f"still win): {_preset_help()}; '' (default): the paper's set-up")
    encoder: str = flag("spiking", "input encoding", ("spiking", "realvalued"))
    data_dir: str = flag("data", "folder with snn_train3.h5 / snn_test3.h5 (generated if missing)")
    out: str = flag("runs/spiking", "run directory (checkpoints, metrics, plot)")
    epochs: int = flag(100, "number of epochs")
    batch_size: int = flag(128, "global batch size (split across processes under torchrun)")
    lr: float = flag(0.008, "Adam learning rate")
    lr_tau_adp_factor: float = flag(5.0, "learning-rate factor for tau_adp (thalamic and cortical; "
                                       "0: fixed)")
    lr_tau_m_factor: float = flag(2.0, "learning-rate factor for tau_m (thalamic and cortical; "
                                     "0: fixed)")
    step_size: int = flag(20, "StepLR step in epochs (published: 20 spiking, 10 real-valued)")
    gamma: float = flag(0.8, "StepLR factor (published: 0.8 spiking, 0.5 real-valued)")
    loss: str = flag("published", "readout loss (and decision): 'published' = cross-entropy "
                      "with the mean readout probability output/T as logits; 'log-mean-prob' "
                      "= -log of the true class's mean readout probability; 'mean-logit' = "
                      "cross-entropy of the time-averaged readout logits (see readout.py)",
                      LOSSES)
    init_b: float = flag(PAPER_INIT["spiking"][0], "baseline threshold b0")
    init_w: float = flag(PAPER_INIT["spiking"][1], "recurrent / thalamic weights start in "
                                                   "U[0, init_w]")
    tau_scale: float = flag(1.0, "multiply the initial tau_m and tau_adp (about 10 and 5 "
                             "steps) by this; 5 gives the spiking network, which sees each "
                             "frame for 5 steps, the real-valued network's time constants "
                             "in frames")
    seed: int = flag(0, "model initialisation and data order")
    spike_seed: int = flag(0, "seed of the Bernoulli spike encoding (spiking only)")
    features: str = flag("published", "real-valued input: 'published' = each node normalised "
                          "over the 12 sweeps; 'signed-log' = sign(v) log(1 + |v|) per "
                          "component (real-valued only; see whisker_dataset.py)",
                          REALVALUED_FEATURES)
    resample_each_epoch: bool = flag(False, "draw new input spikes every epoch (published: no)")
    train_sweeps: str = flag("0", "sweeps a training sample is read from, one drawn anew per "
                                  "sample and epoch: '0' (published: sweep 0 only), a range "
                                  "'0-3' (the 4 object rotations on the central path), a list "
                                  "'0,4,8' or 'all'; the test set always reads sweep 0")
    whisker_dropout: float = flag(0.0, "training augmentation: silence each whisker of each "
                                       "training sample with this probability, anew every "
                                       "epoch (published: 0)")
    val_fraction: float = flag(0.0, "hold out this fraction of the training set (stratified, "
                                    "drawn with --val-seed) as a validation set: best.pth is "
                                    "then the epoch of the best validation accuracy (ties: the "
                                    "lower validation loss) and the test set is only "
                                    "reported; 0 (published): no validation set, best.pth by "
                                    "test accuracy")
    val_seed: int = flag(0, "seed of the --val-fraction split (apart from --seed, so that "
                            "runs of several seeds share one validation set)")
    patience: int = flag(0, "stop after this many epochs without a better validation "
                            "accuracy (needs --val-fraction; 0: run every epoch)")
    rate_reg: float = flag(0.0, "firing-rate regulariser: add rate_reg x the mean over samples "
                                "of (the sample's mean cortical rate - --target-rate)^2 to the "
                                "loss (--rate-reg-of neuron: per neuron, as LSNN / e-prop); 0 "
                                "(published): off")
    target_rate: float = flag(0.02, "target of --rate-reg: spikes per neuron per step")
    rate_reg_of: str = flag("sample", "what --rate-reg holds near --target-rate: 'sample' = "
                                      "each sample's mean rate over the cortex; 'neuron' = "
                                      "each neuron's mean rate over the batch (silent and "
                                      "runaway neurons both cost)", RATE_REG_OF)
    readout_tau: float = flag(0.0, "leaky readout: the logits become the membranes of 3 "
                                   "non-spiking leaky output neurons with this tau_m (steps) "
                                   "driven by the readout, as the adaptive SRNN of Yin et al. "
                                   "2021 reads out; 0 (published): the readout itself")
    readout_weight_decay: float = flag(0.0, "decoupled weight decay of the two readout layers' "
                                            "weights: each step multiplies them by 1 - lr x "
                                            "this (AdamW-style); 0 (published): none")
    readout_dropout: float = flag(0.0, "drop each readout neuron (the 3,606 excitatory neurons "
                                       "the readout reads) with this probability for a whole "
                                       "training batch, the others scaled by 1 / (1 - p); 0 "
                                       "(published): none")
    # ---- the training levers of docs/RESULTS.md ("Fitting the training set"); published: off
    surrogate_sigma: float = flag(SURROGATE_SIGMA, "width (std) of the spike's Gaussian "
                                  "pseudo-derivative in membrane units (published 0.5, about "
                                  "12x b0; b0/2 scales it to the threshold)")
    surrogate_scale: float = flag(SURROGATE_SCALE, "height factor of the pseudo-derivative "
                                  "(its peak is this / (2.507 x --surrogate-sigma))")
    surrogate_cutoff: float = flag(0.0, "truncate the pseudo-derivative to zero beyond this "
                                        "many sigmas (the numba backward then skips neurons "
                                        "far from threshold); 0 (published): untruncated")
    init_w_thalamic: float = flag(0.0, "thalamocortical weights start in U[0, this] (0: "
                                       "--init-w, as published)")
    balance: bool = flag(False, "scale each neuron's initial inhibitory weights to sum to its "
                                "excitatory ones (per-neuron E/I balance)")
    init_state: str = flag("published", "initial state: 'published' = U[0, 1) membranes and "
                                        "spikes, 'zero' = at rest and silent", INIT_STATES)
    readout_norm: bool = flag(False, "standardise each read-out neuron's rate by its mean and "
                                     "spread over the training set before the first step "
                                     "(for --loss mean-logit)")
    readout_centre: bool = flag(False, "the readout reads each sample's rates minus their mean "
                                       "over the read-out neurons (the common mode; with "
                                       "--readout-norm, of the standardised rates)")
    readout_follow: bool = flag(False, "with --readout-norm: measure the standardisation "
                                       "again after each epoch in which the network trains "
                                       "(training set, the network as it then is), so that "
                                       "the readout keeps reading standardised rates while "
                                       "they move")
    lr_readout_factor: float = flag(1.0, "learning-rate factor of the two readout layers")
    lr_recurrent_factor: float = flag(1.0, "learning-rate factor of the recurrent and "
                                           "thalamocortical weights")
    grad_clip: float = flag(0.0, "clip the gradient's global L2 norm to this (0: no clipping)")
    readout_epochs: int = flag(0, "train only the readout for the first N epochs (-1: every "
                                  "epoch): the network (weights, time constants, encoder) "
                                  "stays as initialised and runs without back-propagation "
                                  "through time, which is faster; 0 (published): train "
                                  "everything from the start")
    readout_last: int = flag(0, "train only the readout in the last N epochs, on the network "
                                "as trained by then (with --readout-norm its standardisation "
                                "is measured again first); 0: none")
    device: str = flag("auto", "auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    dtype: str = flag("float32", "parameter dtype", tuple(DTYPES))
    engine: str = flag("auto", "simulation engine: auto (numba on the CPU, torch on CUDA), "
                               "reference, numba or torch", ENGINES)
    resume: str = flag("", "continue a run: its folder (from its checkpoint.pth) or a "
                           "checkpoint file of it (e.g. best.pth; with --out NEW_DIR a branch)")
    max_train_samples: int = flag(0, "use only the first N training samples (0: all)")
    max_test_samples: int = flag(0, "use only the first N test samples (0: all)")
    n_steps: int = flag(0, "truncate the sequences to T steps (0: full, 550 / 110)")
    objects_per_class: int = flag(91, "objects per class when the dataset is generated")
    data_seed: int = flag(0, "simulator seed when the dataset is generated")
    workers: int = flag(0, "simulator processes when the dataset is generated (0: all cores)")
    loader_workers: int = flag(-1, "DataLoader worker processes (-1: 4 on CUDA, 0 on the CPU)")
    progress: bool = flag(True, "tqdm progress bars")
    overwrite: bool = flag(False, "replace the run already in --out (its files are replaced "
                                   "when this run's first epoch ends; until then it is kept)")

    def __post_init__(self):
        if self.engine == "fast":   # the name of older versions (stored in their checkpoints)
            self.engine = "auto"

    def with_preset(self, given=()) -> "TrainConfig":
        """This config with ``preset``'s settings for every field not in ``given`` (the flags
        given explicitly)."""
        if not self.preset:
            return self
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {tuple(PRESETS)} (or '' for none), got "
                             f"{self.preset!r}")
        values = PRESETS[self.preset].get(self.encoder)
        if values is None:
            raise ValueError(f"--preset {self.preset} is a recipe for the "
                             f"{' and '.join(PRESETS[self.preset])} input only, not {self.encoder}")
        return dataclasses.replace(self, **{k: v for k, v in values.items() if k not in given})

    def readout_only(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains the readout alone (``readout_epochs``,
        ``readout_last``)."""
        return (self.readout_epochs == -1 or epoch < self.readout_epochs
                or 0 < self.readout_last and epoch >= self.epochs - self.readout_last)

    def readout_switch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` is the first of ``readout_last``'s readout-only epochs after
        epochs that trained the network."""
        return epoch > 0 and self.readout_only(epoch) and not self.readout_only(epoch - 1)

    def model_config(self) -> ModelConfig:
        base = ModelConfig()
        scale = lambda r: tuple(self.tau_scale * v for v in r)  # noqa: E731
        return ModelConfig(encoder=self.encoder, init_b=self.init_b, init_w=self.init_w,
                           seed=self.seed, readout_tau=self.readout_tau,
                           tau_m_range=scale(base.tau_m_range),
                           tau_adp_range=scale(base.tau_adp_range),
                           surrogate_sigma=self.surrogate_sigma,
                           surrogate_scale=self.surrogate_scale,
                           surrogate_cutoff=self.surrogate_cutoff,
                           init_w_thalamic=self.init_w_thalamic, balance=self.balance,
                           init_state=self.init_state, readout_norm=self.readout_norm,
                           readout_centre=self.readout_centre)

    def validate(self) -> "TrainConfig":
        positive = lambda v: math.isfinite(v) and v > 0  # noqa: E731
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (positive(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (math.isfinite(self.lr_tau_adp_factor) and self.lr_tau_adp_factor >= 0,
             f"--lr-tau-adp-factor must be >= 0 (0: fixed), got {self.lr_tau_adp_factor}"),
            (math.isfinite(self.lr_tau_m_factor) and self.lr_tau_m_factor >= 0,
             f"--lr-tau-m-factor must be >= 0 (0: fixed), got {self.lr_tau_m_factor}"),
            (positive(self.tau_scale), f"--tau-scale must be a positive number, got {self.tau_scale}"),
            (self.step_size >= 1, f"--step-size must be >= 1, got {self.step_size}"),
            (positive(self.gamma) and self.gamma <= 1,
             f"--gamma must be in (0, 1] (the StepLR factor), got {self.gamma}"),
            (positive(self.init_b), f"--init-b must be a positive number, got {self.init_b}"),
            (positive(self.init_w), f"--init-w must be a positive number, got {self.init_w}"),
            (math.isfinite(self.whisker_dropout) and 0 <= self.whisker_dropout < 1,
             f"--whisker-dropout must be in [0, 1), got {self.whisker_dropout}"),
            (self.n_steps == 0 or self.n_steps >= 2, f"--n-steps must be 0 (full) or >= 2, got {self.n_steps}"),
            (math.isfinite(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.patience >= 0, f"--patience must be >= 0 (0: no early stopping), got {self.patience}"),
            (self.patience == 0 or self.val_fraction > 0,
             f"--patience {self.patience} needs a validation set: give --val-fraction (e.g. 0.2)"),
            (math.isfinite(self.rate_reg) and self.rate_reg >= 0,
             f"--rate-reg must be >= 0, got {self.rate_reg}"),
            (math.isfinite(self.target_rate) and 0 <= self.target_rate <= 1,
             f"--target-rate must be in [0, 1] (spikes per neuron per step), got {self.target_rate}"),
            (math.isfinite(self.readout_weight_decay) and self.readout_weight_decay >= 0
             and self.lr * self.readout_weight_decay < 1,
             f"--readout-weight-decay must be >= 0 with --lr x it below 1, got "
             f"{self.readout_weight_decay}"),
            (math.isfinite(self.readout_tau) and self.readout_tau >= 0,
             f"--readout-tau must be >= 0 (0: no leaky readout), got {self.readout_tau}"),
            (math.isfinite(self.readout_dropout) and 0 <= self.readout_dropout < 1,
             f"--readout-dropout must be in [0, 1), got {self.readout_dropout}"),
            (self.max_train_samples >= 0, f"--max-train-samples must be >= 0, got {self.max_train_samples}"),
            (self.max_test_samples >= 0, f"--max-test-samples must be >= 0, got {self.max_test_samples}"),
            (self.objects_per_class >= 1, f"--objects-per-class must be >= 1, got {self.objects_per_class}"),
            (self.workers >= 0, f"--workers must be >= 0 (0: all cores), got {self.workers}"),
            (self.loader_workers >= -1, f"--loader-workers must be >= -1, got {self.loader_workers}"),
            (bool(str(self.out).strip()), "--out must name the run folder, got ''"),
            data_dir_check(self.data_dir),
            (self.preset in ("",) + tuple(PRESETS),
             f"--preset must be one of {tuple(PRESETS)} (or '' for none), got {self.preset!r}"),
            (positive(self.surrogate_sigma),
             f"--surrogate-sigma must be a positive number, got {self.surrogate_sigma}"),
            (positive(self.surrogate_scale),
             f"--surrogate-scale must be a positive number, got {self.surrogate_scale}"),
            (math.isfinite(self.surrogate_cutoff) and self.surrogate_cutoff >= 0,
             f"--surrogate-cutoff must be >= 0 (0: untruncated), got {self.surrogate_cutoff}"),
            (math.isfinite(self.init_w_thalamic) and 0 <= self.init_w_thalamic <= 1,
             f"--init-w-thalamic must be in [0, 1] (0: --init-w), got {self.init_w_thalamic}"),
            (math.isfinite(self.lr_readout_factor) and self.lr_readout_factor >= 0,
             f"--lr-readout-factor must be >= 0, got {self.lr_readout_factor}"),
            (math.isfinite(self.lr_recurrent_factor) and self.lr_recurrent_factor >= 0,
             f"--lr-recurrent-factor must be >= 0, got {self.lr_recurrent_factor}"),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0,
             f"--grad-clip must be >= 0 (0: none), got {self.grad_clip}"),
            (self.readout_epochs >= -1, f"--readout-epochs must be >= 0, or -1 (the readout "
                                        f"alone every epoch), got {self.readout_epochs}"),
            (self.readout_last >= 0, f"--readout-last must be >= 0, got {self.readout_last}"),
            (self.readout_norm or not self.readout_follow,
             "--readout-follow re-measures --readout-norm's standardisation: give both"),
        ] + [seed_check(getattr(self, name), f"--{name.replace('_', '-')}")
             for name in ("seed", "spike_seed", "data_seed", "val_seed")]
        require(checks)
        if self.encoder == "spiking" and self.features != "published":
            raise ValueError(f"--features {self.features} applies to the real-valued input "
                             "only (RSNN_bfd_RealValued.py)")
        try:
            parse_sweeps(self.train_sweeps)
        except ValueError as err:
            raise ValueError(f"--train-sweeps: {err}") from None
        for name in ("encoder", "dtype", "engine", "loss", "features", "init_state"):
            choices = next(f for f in dataclasses.fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name} must be one of {choices}, got {getattr(self, name)!r}")
        own = type(self).__dataclass_fields__["encoder"].default
        if type(self) is not TrainConfig and self.encoder != own:   # a script's own config
            raise ValueError(f"{SCRIPTS[own]} trains the {own} network, not a {self.encoder} "
                             f"one: run python {SCRIPTS[self.encoder]} instead")
        return self

    def ineffective(self) -> list[str]:
        """Notices of settings that differ from the script's defaults and change nothing in
        this run (the run goes on; the flag is probably not what was meant)."""
        defaults = type(self)()
        changed = lambda *names: [n for n in names  # noqa: E731
                                  if getattr(self, n) != getattr(defaults, n)]
        flags = lambda names: ", ".join("--" + n.replace("_", "-") for n in names)  # noqa: E731
        notes = []
        if self.readout_epochs > self.epochs:
            notes.append(f"--readout-epochs {self.readout_epochs} is more than --epochs "
                         f"{self.epochs}: every epoch trains the readout alone (as "
                         "--readout-epochs -1)")
        if self.readout_last >= self.epochs:
            notes.append(f"--readout-last {self.readout_last} is not less than --epochs "
                         f"{self.epochs}: every epoch trains the readout alone")
        if all(self.readout_only(e) for e in range(self.epochs)):
            idle = changed("surrogate_sigma", "surrogate_scale", "surrogate_cutoff",
                           "lr_tau_adp_factor", "lr_tau_m_factor", "lr_recurrent_factor",
                           "rate_reg", "target_rate", "rate_reg_of", "readout_follow")
            if idle:
                notes.append(f"{flags(idle)} change nothing here: only the readout trains "
                             "(--readout-epochs, --readout-last), and the network runs "
                             "without gradients")
        elif self.rate_reg == 0 and changed("target_rate", "rate_reg_of"):
            idle = changed("target_rate", "rate_reg_of")
            notes.append(f"{flags(idle)} change{'s' if len(idle) == 1 else ''} nothing "
                         "without --rate-reg")
        if self.encoder == "realvalued":
            idle = changed("spike_seed", "resample_each_epoch")
            if idle:
                notes.append(f"{flags(idle)} change nothing for real-valued input (no spikes "
                             "are drawn)")
        return notes


def with_default(name: str, default):
    """A field of :class:`TrainConfig` with another default (same flag help and choices)."""
    return field(default=default, metadata=TrainConfig.__dataclass_fields__[name].metadata)


@dataclass
class SpikingConfig(TrainConfig):
    """``RSNN_bfd_SpikingBased.py``: spike-encoded input, T = 550, the spiking PAPER_INIT,
    StepLR(20, 0.8) (the defaults of :class:`TrainConfig`)."""


@dataclass
class RealValuedConfig(TrainConfig):
    """``RSNN_bfd_RealValued.py``: real-valued input, T = 110, the real-valued PAPER_INIT,
    StepLR(10, 0.5)."""
    encoder: str = with_default("encoder", "realvalued")
    step_size: int = with_default("step_size", 10)
    gamma: float = with_default("gamma", 0.5)
    out: str = with_default("out", "runs/realvalued")
    init_b: float = with_default("init_b", PAPER_INIT["realvalued"][0])
    init_w: float = with_default("init_w", PAPER_INIT["realvalued"][1])


SCRIPTS = {"spiking": "RSNN_bfd_SpikingBased.py", "realvalued": "RSNN_bfd_RealValued.py"}
