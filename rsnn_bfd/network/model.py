"""The barrel-cortex RSNN: one definition of the network, used by every script.

    whisker input -> encoder -> thalamus (200 ALIF, VPM) -> 13 cortical populations
    (4,218 ALIF, L4 and L2/3, sequential update) -> readout from the excitatory populations

Shapes: spiking input ``(batch, 2, 12, T, 93)`` (force / torque spikes of 31 whiskers x 3
nodes for 12 sweeps), real-valued input ``(batch, 1, 12, T, 558)`` (31 whiskers x 3 nodes x
6 force/torque components). As in the published model only sweep 0 drives the network.

Within a time step the populations are updated one after another in index order; a
population receives this step's spikes of the populations before it and the previous step's
spikes of itself and those after it (the published Gauss-Seidel order, which the golden
cases of the published code fix).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from rsnn_bfd.network import engines
from rsnn_bfd.network.anatomy import Anatomy, load_anatomy
from rsnn_bfd.network.engines import EngineOptions, Network
from rsnn_bfd.network.neuron import BETA, SURROGATE_SCALE, SURROGATE_SIGMA, leaky_integrate
from rsnn_bfd.network.sparse import SparseLinear

ENCODERS = ("spiking", "realvalued")
ENGINES = engines.NAMES
# the parameter dtypes a network is built and stored in (float64: the golden cases)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# The paper's initialisation per input encoding: (init_b, init_w), the baseline threshold b0
# and the upper end of the initial recurrent / thalamic weights U[0, init_w]. The one place
# these numbers live; the training scripts' configs take their defaults from here.
PAPER_INIT = {"spiking": (0.04, 0.06), "realvalued": (0.03, 0.05)}
INIT_STATES = ("published", "zero")
# The smallest time constant training leaves (steps): a time constant is positive, and at
# 0.01 steps the decay factor exp(-1/tau) is already exp(-100), a neuron without memory. The
# published code did not bound them; a step that would push one below this is the only change.
TAU_MIN = 0.01


@dataclass
class ModelConfig:
    """Architecture and initialisation; the defaults are the paper's spiking set-up."""
    encoder: str = "spiking"        # "spiking" (93 + 93 -> 200) or "realvalued" (558 -> 200)
    init_b: float = PAPER_INIT["spiking"][0]   # baseline threshold b_j0
    init_w: float = PAPER_INIT["spiking"][1]   # recurrent / thalamic weights start in U[0, init_w]
    n_thalamus: int = 200           # VPM barreloid units
    n_inputs_spiking: int = 93      # 31 whiskers x 3 nodes
    n_inputs_realvalued: int = 558  # 31 whiskers x 3 nodes x 6 components
    readout_hidden: int = 128
    n_classes: int = 3
    beta: float = BETA
    tau_m_range: tuple = (9.0, 11.0)     # tau_m ~ U(9, 11) steps (published code: exactly 10)
    tau_adp_range: tuple = (4.0, 6.0)    # tau_adp ~ U(4, 6) steps (published code: exactly 5)
    sweep: int = 0                  # the sweep that drives the network (published: 0)
    seed: int = 0                   # masks, weights and time constants (own generator)
    init_state_seed: int = 515      # the published initial state: U[0,1) from seed 515
    # > 0: the logits are the membranes of 3 leaky non-spiking output neurons with this
    # tau_m (steps) driven by the readout (Yin et al. 2021); 0 (published): the readout itself
    readout_tau: float = 0.0
    # Training levers (docs/RESULTS.md, "Fitting the training set"); each default is the paper's.
    # The Gaussian pseudo-derivative of the spike, in membrane units (published: sigma 0.5,
    # scale 0.5, about 12x the threshold b0 wide; sigma ~ b0/2 scales it to the threshold).
    surrogate_sigma: float = SURROGATE_SIGMA
    surrogate_scale: float = SURROGATE_SCALE
    # > 0: the pseudo-derivative is zero beyond this many sigmas, so that the numba backward
    # skips the neurons far from threshold (Perez-Nieves & Goodman 2021); 0: untruncated
    surrogate_cutoff: float = 0.0
    # thalamocortical weights start in U[0, init_w_thalamic] (0: init_w, as published)
    init_w_thalamic: float = 0.0
    # scale each neuron's initial inhibitory weights so that they sum to its excitatory ones
    # (per-target E/I balance, as Cornford et al. 2021; published: no)
    balance: bool = False
    # "published": U[0, 1) membranes and "spikes"; "zero": every unit at rest, silent
    init_state: str = "published"
    # standardise the readout's input: each read-out neuron's rate is shifted and scaled by
    # its mean and spread over the training set (buffers ``readout_shift``/``readout_scale``,
    # set by training before the first step, see rsnn_bfd.training.init); published: no
    readout_norm: bool = False
    # subtract from the (standardised) rates of a sample their mean over the 3,606 read-out
    # neurons: the common mode, the sample's overall level of activity, which dominates the
    # standardised rates (its singular value is about 9x the next on the default data) and
    # makes the readout's training ill-conditioned; docs/RESULTS.md. Published: no
    readout_centre: bool = False

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if not 0 <= self.init_w <= 1:
            raise ValueError(f"init_w must lie in [0, 1], got {self.init_w}")
        if not (math.isfinite(self.readout_tau) and self.readout_tau >= 0):
            raise ValueError(f"readout_tau must be >= 0 (0: no leaky readout), got "
                             f"{self.readout_tau}")
        if not (math.isfinite(self.surrogate_sigma) and self.surrogate_sigma > 0
                and math.isfinite(self.surrogate_scale) and self.surrogate_scale > 0):
            raise ValueError("surrogate_sigma and surrogate_scale must be positive, got "
                             f"{self.surrogate_sigma} and {self.surrogate_scale}")
        if not (math.isfinite(self.surrogate_cutoff) and self.surrogate_cutoff >= 0):
            raise ValueError(f"surrogate_cutoff must be >= 0 (0: untruncated), got "
                             f"{self.surrogate_cutoff}")
        if not 0 <= self.init_w_thalamic <= 1:
            raise ValueError(f"init_w_thalamic must lie in [0, 1] (0: init_w), got "
                             f"{self.init_w_thalamic}")
        if self.init_state not in INIT_STATES:
            raise ValueError(f"init_state must be one of {INIT_STATES}, got {self.init_state!r}")
        self.tau_m_range = tuple(self.tau_m_range)
        self.tau_adp_range = tuple(self.tau_adp_range)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict) -> "ModelConfig":
        """The config of :meth:`to_dict`; the ``engine`` key of older versions (a run-time
        choice since) is ignored."""
        return cls(**{k: v for k, v in stored.items() if k != "engine"})


class InitialState(NamedTuple):
    """Initial thalamic and cortical state. "Spikes" may be non-binary (published: U[0,1))."""
    mem_thal: torch.Tensor   # (batch, 200)
    spk_thal: torch.Tensor   # (batch, 200)
    mem: torch.Tensor        # (batch, 4218)
    spk: torch.Tensor        # (batch, 4218)


class RSNNOutput(NamedTuple):
    """``output``: (batch, n_classes) readout softmax summed over t = 1..T-1 (published).

    ``spikes``, ``mem``: (T, batch, 4218) cortical spikes and membranes when recorded, else None.
    ``thal_spikes``: (T, batch, 200) when spikes are recorded, else None.
    ``logits``: (T-1, batch, n_classes) the readout's logits at t = 1..T-1, whose softmax
    ``output`` sums (with ``readout_tau`` > 0: the leaky output neurons' membranes).
    ``decision``: the network's decision rule, the loss it was trained with
    (:mod:`rsnn_bfd.network.readout`), which :func:`~rsnn_bfd.network.readout.predict`
    applies unless told another.
    """
    output: torch.Tensor
    spikes: torch.Tensor | None = None
    mem: torch.Tensor | None = None
    thal_spikes: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    decision: str = "published"


class SpikingEncoder(nn.Module):
    """Force spikes 93 -> 100 and torque spikes 93 -> 100, concatenated to 200.

    (batch, 2, T, 93) -> (T, batch, 200).
    """
    channels = 2

    def __init__(self, n_inputs: int = 93, n_out: int = 200, generator=None):
        super().__init__()
        self.force = _linear(n_inputs, n_out // 2, generator, xavier=True)
        self.torque = _linear(n_inputs, n_out // 2, generator, xavier=True)

    def forward(self, x):
        x = x.transpose(0, 2)                      # (T, 2, batch, 93)
        return torch.cat((self.force(x[:, 0]), self.torque(x[:, 1])), dim=-1)


class RealValuedEncoder(nn.Module):
    """558 real-valued features -> 200. (batch, 1, T, 558) -> (T, batch, 200)."""
    channels = 1

    def __init__(self, n_inputs: int = 558, n_out: int = 200, generator=None):
        super().__init__()
        self.fc = _linear(n_inputs, n_out, generator, xavier=True)

    def forward(self, x):
        return self.fc(x[:, 0].transpose(0, 1))


class BarrelCortexRSNN(nn.Module):
    """The recurrent spiking network of the barrel column.

    Parameters (names are used in checkpoints and by the analyses):
      ``encoder``                      SpikingEncoder or RealValuedEncoder
      ``thalamus_input``               Linear(200, 200): encoder output -> VPM current
      ``thal_tau_m``, ``thal_tau_adp`` (200,) VPM time constants
      ``thalamocortical``              SparseLinear(200 -> 4218), VPM -> cortex (excitatory)
      ``recurrent``                    SparseLinear(4218 -> 4218), non-negative values;
                                       signed by the presynaptic type (``pre_sign`` buffer)
      ``tau_m``, ``tau_adp``           (4218,) cortical time constants
      ``readout``                      Linear(3606, 128) then Linear(128, 3), no nonlinearity

    The simulation engine is a run-time choice, not part of the architecture: ``engine``
    (``"auto"``, ``"reference"``, ``"numba"`` or ``"torch"``; see
    :mod:`rsnn_bfd.network.engines`) and ``engine_options``, or the ``engine=`` argument of
    :meth:`forward`.
    """

    def __init__(self, config: ModelConfig | None = None, anatomy: Anatomy | None = None,
                 engine: str = "auto"):
        super().__init__()
        self.engine = engine
        self.engine_options = EngineOptions()
        # the decision rule (the loss it was trained with; published: the summed softmax),
        # a property of the trained network set from its checkpoint, not of the architecture
        self.decision = "published"
        self.config = config = config or ModelConfig()
        self.anatomy = anatomy = anatomy or load_anatomy()
        n, n_thal = anatomy.n_neurons, config.n_thalamus
        g = torch.Generator().manual_seed(config.seed)

        if config.encoder == "spiking":
            self.encoder = SpikingEncoder(config.n_inputs_spiking, n_thal, g)
        else:
            self.encoder = RealValuedEncoder(config.n_inputs_realvalued, n_thal, g)
        self.thalamus_input = _linear(n_thal, n_thal, g, xavier=False)
        self.thal_tau_m = nn.Parameter(_uniform(n_thal, config.tau_m_range, g))
        self.thal_tau_adp = nn.Parameter(_uniform(n_thal, config.tau_adp_range, g))
        self.thalamocortical = SparseLinear(n_thal, n, anatomy.thalamic_probabilities(),
                                            config.init_w_thalamic or config.init_w,
                                            generator=g)
        self.recurrent = SparseLinear(n, n, anatomy.neuron_probabilities(), config.init_w,
                                      generator=g)
        if config.balance:
            _balance_inhibition_(self.recurrent, torch.as_tensor(anatomy.pre_sign))
        self.tau_m = nn.Parameter(_uniform(n, config.tau_m_range, g))
        self.tau_adp = nn.Parameter(_uniform(n, config.tau_adp_range, g))
        n_readout = len(anatomy.readout_neurons)
        self.readout = nn.Sequential(
            _linear(n_readout, config.readout_hidden, g, xavier=True),
            _linear(config.readout_hidden, config.n_classes, g, xavier=True))

        self.register_buffer("pre_sign", torch.as_tensor(anatomy.pre_sign, dtype=torch.float32))
        self.register_buffer("readout_index", torch.as_tensor(anatomy.readout_neurons))
        if config.readout_norm:   # identity until training sets them from its data
            self.register_buffer("readout_shift", torch.zeros(n_readout))
            self.register_buffer("readout_scale", torch.ones(n_readout))
        self.population_offsets = [int(o) for o in anatomy.offsets]
        # (3606,) multipliers of the readout's inputs, set by training for one batch
        # (``--readout-dropout``); None: the published readout. Not part of the state.
        self.readout_keep: torch.Tensor | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def n_neurons(self) -> int:
        return self.anatomy.n_neurons

    def signed_recurrent_weight(self) -> torch.Tensor:
        """(4218, 4218) effective recurrent weights ``sign[pre] * weight * mask``."""
        return self.recurrent.effective_weight() * self.pre_sign

    @torch.no_grad()
    def constrain_(self) -> None:
        """Apply the constraints (weights in [0, 1] on their masks, time constants at least
        ``TAU_MIN``); call right after every optimiser step."""
        self.recurrent.constrain_()
        self.thalamocortical.constrain_()
        for tau in (self.tau_m, self.tau_adp, self.thal_tau_m, self.thal_tau_adp):
            tau.clamp_(min=TAU_MIN)

    def initial_state(self, batch: int, dtype=None, device=None) -> InitialState:
        """The published initial state: uniform in [0, 1) from a generator seeded with 515
        (with ``init_state="zero"``: all zeros).

        The draw order matches the published code (thalamic membrane, thalamic "spikes",
        then the cortical membranes population by population, then the cortical "spikes"),
        so float64 draws equal the published ones. Uses its own generator: the global RNG
        is untouched and every call gives the same state.
        """
        dtype = dtype or self.tau_m.dtype
        device = device or self.tau_m.device
        g = torch.Generator().manual_seed(self.config.init_state_seed)
        n_thal, sizes = self.config.n_thalamus, self.anatomy.sizes
        if self.config.init_state == "zero":
            z = lambda n: torch.zeros(batch, n, dtype=dtype, device=device)  # noqa: E731
            return InitialState(z(n_thal), z(n_thal), z(self.n_neurons), z(self.n_neurons))

        def draw(n):
            return torch.rand(batch, int(n), generator=g, dtype=dtype)

        mem_thal, spk_thal = draw(n_thal), draw(n_thal)
        mem = torch.cat([draw(s) for s in sizes], dim=1)
        spk = torch.cat([draw(s) for s in sizes], dim=1)
        return InitialState(*(t.to(device) for t in (mem_thal, spk_thal, mem, spk)))

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` of shape (batch, channels, 12, T, features) and return it."""
        channels = self.encoder.channels
        features = (self.config.n_inputs_spiking if self.config.encoder == "spiking"
                    else self.config.n_inputs_realvalued)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"input must have shape (batch, {channels}, sweeps, T, {features}), "
                             f"got {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"the {self.config.encoder} encoder expects {channels} input "
                             f"channel(s) on axis 1, got {x.shape[1]} (shape {tuple(x.shape)})")
        if x.shape[4] != features:
            raise ValueError(f"the {self.config.encoder} encoder expects {features} features "
                             f"on the last axis, got {x.shape[4]} (shape {tuple(x.shape)})")
        if x.shape[2] <= self.config.sweep:
            raise ValueError(f"input has {x.shape[2]} sweeps but sweep {self.config.sweep} "
                             "drives the network")
        if x.shape[3] < 1 or x.shape[0] < 1:
            raise ValueError(f"input has an empty batch or time axis: {tuple(x.shape)}")
        return x

    def _check_state(self, state: InitialState, batch: int) -> InitialState:
        n, n_thal = self.n_neurons, self.config.n_thalamus
        expected = ((batch, n_thal), (batch, n_thal), (batch, n), (batch, n))
        for name, t, shape in zip(InitialState._fields, state, expected):
            if tuple(t.shape) != shape:
                raise ValueError(f"initial state {name} must have shape {shape}, "
                                 f"got {tuple(t.shape)}")
        return state

    # ------------------------------------------------------------------ forward
    def thalamus_current(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder and thalamic input layer: x (batch, channels, T, features) of the driving
        sweep -> VPM input current (T, batch, 200)."""
        return self.thalamus_input(self.encoder(x.to(self.tau_m.dtype)))

    def network(self) -> Network:
        """The record an engine reads (see :mod:`rsnn_bfd.network.engines`): the parameters
        themselves (so gradients flow), the masks, time constants, readout and constants. With
        ``readout_keep`` set, the first readout layer's weight columns are multiplied by it
        (dropout of readout neurons for a training batch; the gradient reaches the weight).
        With ``readout_centre`` the first layer reads ``C z``, C = I - 11^T/3606, as ``W C``:
        the same forward and the same gradient as a readout of centred inputs."""
        ro1, ro2 = self.readout[0], self.readout[1]
        w1, b1 = ro1.weight, ro1.bias
        if self.config.readout_centre:
            w1 = w1 - w1.mean(dim=1, keepdim=True)
        if self.config.readout_norm:   # (s - shift) * scale, folded into the first layer
            w1 = w1 * self.readout_scale
            b1 = b1 - w1 @ self.readout_shift
        if self.readout_keep is not None:
            w1 = w1 * self.readout_keep
        return Network(tuple(self.population_offsets), self.recurrent.weight,
                       self.recurrent.mask, self.pre_sign, self.thalamocortical.weight,
                       self.thalamocortical.mask, self.tau_m, self.tau_adp, self.thal_tau_m,
                       self.thal_tau_adp, self.readout_index,
                       (w1, b1, ro2.weight, ro2.bias),
                       float(self.config.init_b), float(self.config.beta),
                       int(self.config.n_classes),
                       (float(self.config.surrogate_sigma), float(self.config.surrogate_scale),
                        float(self.config.surrogate_cutoff)))

    def use_engine(self, engine: str = "auto", options: EngineOptions | None = None) -> str:
        """Run with ``engine`` from now on, resolved for this model's device (``auto`` becomes
        numba or torch), and with ``options`` (default: read from the environment now, see
        :meth:`rsnn_bfd.network.engines.EngineOptions.from_env`). Returns the engine's name."""
        self.engine = self.resolved_engine(engine)
        self.engine_options = options or EngineOptions.from_env()
        return self.engine

    def resolved_engine(self, engine: str | None = None) -> str:
        """The engine that runs for ``engine`` (default: ``self.engine``) on this model's
        device (``auto`` resolved, see :func:`rsnn_bfd.network.engines.resolve`)."""
        return engines.resolve(engine or self.engine, self.tau_m.device)

    def thalamus(self, x: torch.Tensor, state: InitialState, engine: str | None = None,
                 options: EngineOptions | None = None):
        """Encoder and VPM layer for the whole sequence.

        x: (batch, channels, T, features) of the driving sweep. Returns the thalamic spikes
        (T, batch, 200).
        """
        run = engines.get(self.resolved_engine(engine))
        return run.run_thalamus(self.network(), self.thalamus_current(x), state,
                                options or self.engine_options)

    def forward(self, x: torch.Tensor, state: InitialState | None = None,
                record_spikes: bool = False, record_mem: bool = False,
                engine: str | None = None, options: EngineOptions | None = None
                ) -> RSNNOutput:
        """Run the network over a whole sequence.

        x: (batch, 2, 12, T, 93) spikes or (batch, 1, 12, T, 558) real values.
        state: explicit :class:`InitialState`; default :meth:`initial_state`.
        engine, options: this call's engine and
        :class:`rsnn_bfd.network.engines.EngineOptions` (default: ``self.engine``,
        ``self.engine_options``).
        Returns :class:`RSNNOutput`; ``output`` is (batch, 3).
        """
        x = self.check_input(x)
        batch = x.shape[0]
        state = self._check_state(state, batch) if state is not None else \
            self.initial_state(batch)
        name = self.resolved_engine(engine)
        options = options or self.engine_options
        thal_spikes = self.thalamus(x[:, :, self.config.sweep], state, name, options)
        logits, spikes, mem = engines.get(name).run_cortex(self.network(), thal_spikes, state,
                                                           record_spikes, record_mem, options)
        if self.config.readout_tau > 0:
            logits = leaky_integrate(logits, self.config.readout_tau)
        output = torch.softmax(logits, dim=-1).sum(0)     # T = 1: an empty sum, zeros
        return RSNNOutput(output, spikes, mem, thal_spikes if record_spikes else None, logits,
                          self.decision)

    def read_out(self, spikes: torch.Tensor) -> RSNNOutput:
        """The readout of recorded spikes as :meth:`forward` forms it (with the leaky readout
        when ``readout_tau`` > 0). spikes: (T-1, batch, 4218) of steps 1..T-1 ->
        :class:`RSNNOutput` with ``output`` (batch, 3) and ``logits`` (T-1, batch, 3). Used by
        ``--readout-epochs``, which runs the network without gradients and trains this part."""
        logits = engines.readout_logits(self.network(), spikes)
        if self.config.readout_tau > 0:
            logits = leaky_integrate(logits, self.config.readout_tau)
        return RSNNOutput(torch.softmax(logits, dim=-1).sum(0), logits=logits,
                          decision=self.decision)

    def readout_sum(self, spikes: torch.Tensor) -> torch.Tensor:
        """``read_out(spikes).output``: the summed readout softmax, (batch, 3)."""
        return self.read_out(spikes).output


def _linear(n_in: int, n_out: int, generator, xavier: bool) -> nn.Linear:
    """nn.Linear initialised as published, but from ``generator`` (not the global RNG).

    Weights: Xavier-uniform (``xavier``) or PyTorch's default U(+-1/sqrt(n_in)); biases:
    PyTorch's default U(+-1/sqrt(n_in)).
    """
    layer = nn.Linear(n_in, n_out)
    bound = (6.0 / (n_in + n_out)) ** 0.5 if xavier else n_in ** -0.5
    with torch.no_grad():
        layer.weight.copy_((torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(n_out, generator=generator) * 2 - 1) * n_in ** -0.5)
    return layer


@torch.no_grad()
def _balance_inhibition_(layer: SparseLinear, pre_sign: torch.Tensor) -> None:
    """Scale each row's inhibitory weights (columns with ``pre_sign`` < 0) so that they sum to
    the row's excitatory weights: every neuron starts with zero net recurrent input at equal
    E and I rates. Rows without inhibitory or excitatory input are left alone; the [0, 1]
    bound is kept."""
    inhibitory = (pre_sign < 0).to(layer.weight.dtype)
    w = layer.effective_weight()
    exc, inh = w @ (1 - inhibitory), w @ inhibitory
    factor = torch.where((inh > 0) & (exc > 0), exc / inh.clamp_min(1e-30), torch.ones_like(inh))
    layer.weight.mul_(1 + inhibitory * (factor[:, None] - 1))
    layer.constrain_()


def _uniform(n: int, bounds, generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def build_model(config: ModelConfig | dict | None = None, device=None,
                dtype=torch.float32, engine: str | None = None) -> BarrelCortexRSNN:
    """Construct the network from a config (or its dict) on ``device`` in ``dtype``.

    ``engine``: the simulation engine it runs with (a run-time choice, default ``auto``; see
    :mod:`rsnn_bfd.network.engines`). A config dict of an older version that names an engine is
    accepted.
    """
    if isinstance(config, dict):
        engine = engine or config.get("engine")
        config = ModelConfig.from_dict(config)
    return BarrelCortexRSNN(config, engine=engine or "auto").to(device=device, dtype=dtype)
