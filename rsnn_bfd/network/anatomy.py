"""The anatomy of the model: 13 cortical populations and their connection probabilities.

The figures live in ``data/anatomy.json`` (populations of L4 and L2/3 of one mouse barrel
column, Huang, Zeldenrust & Celikel 2022; see the file's ``provenance``). This module is the
one place that reads them. Everything else (neuron index ranges, signs, readout populations)
is derived from the returned :class:`Anatomy`, never from literals.

Conventions: matrices are indexed ``[post, pre]``, like a weight matrix ``W[post, pre]``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

DEFAULT_ANATOMY = Path(__file__).resolve().parent / "anatomy.json"


class AnatomyError(ValueError):
    """The anatomy table is malformed; the message says what and where."""


@dataclass(frozen=True)
class Population:
    """One neuron subtype of the column."""
    index: int
    name: str
    layer: str              # "L4" or "L2/3"
    type: str               # "E" (excitatory) or "I" (inhibitory)
    size: int               # number of neurons
    reference_rate: float   # Izhikevich-model firing rate per time step
    offset: int             # first index of the population in the 4,218-neuron vector

    @property
    def excitatory(self) -> bool:
        return self.type == "E"

    @property
    def neurons(self) -> slice:
        """Slice of this population in the cortical neuron vector."""
        return slice(self.offset, self.offset + self.size)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Populations and connection probabilities of the column.

    ``p_rec``: (13, 13) probability that a neuron of population ``pre`` connects to a neuron
    of population ``post``, indexed ``[post, pre]``. ``p_thal``: (13,) the same from a VPM
    (thalamic) neuron to each population.
    """
    populations: tuple[Population, ...]
    p_rec: np.ndarray
    p_thal: np.ndarray
    thalamus_size: int
    provenance: str

    @property
    def n_neurons(self) -> int:
        return sum(p.size for p in self.populations)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.populations]

    @property
    def sizes(self) -> np.ndarray:
        return np.array([p.size for p in self.populations])

    @property
    def offsets(self) -> np.ndarray:
        """(14,) start index of each population, then the total."""
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @cached_property
    def population_of_neuron(self) -> np.ndarray:
        """(4218,) population index of every cortical neuron."""
        return np.repeat(np.arange(len(self.populations)), self.sizes)

    @cached_property
    def pre_sign(self) -> np.ndarray:
        """(4218,) +1 for excitatory and -1 for inhibitory neurons (Dale's law)."""
        sign = np.array([1.0 if p.excitatory else -1.0 for p in self.populations])
        return sign[self.population_of_neuron]

    @property
    def readout_populations(self) -> list[int]:
        """The excitatory populations the readout listens to (paper: L4 Pyr_SP, Pyr_SS, L2/3 Pyr)."""
        return [p.index for p in self.populations if p.excitatory]

    @cached_property
    def readout_neurons(self) -> np.ndarray:
        """Indices of the neurons of the readout populations, in population order."""
        return np.concatenate([np.arange(self.populations[i].neurons.start,
                                         self.populations[i].neurons.stop)
                               for i in self.readout_populations])

    def layer_neurons(self, layer: str, type: str | None = None) -> np.ndarray:
        """Indices of the neurons of a layer ("L4", "L2/3"), optionally of one type ("E"/"I")."""
        keep = [p for p in self.populations
                if p.layer == layer and (type is None or p.type == type)]
        if not keep:
            raise AnatomyError(f"no population in layer {layer!r} of type {type!r}")
        return np.concatenate([np.arange(p.neurons.start, p.neurons.stop) for p in keep])

    def neuron_probabilities(self) -> np.ndarray:
        """(4218, 4218) connection probability of every [post, pre] neuron pair."""
        pop = self.population_of_neuron
        return self.p_rec[pop][:, pop]

    def thalamic_probabilities(self) -> np.ndarray:
        """(4218, 200) connection probability of every [cortical neuron, VPM neuron] pair."""
        return np.repeat(self.p_thal[self.population_of_neuron][:, None], self.thalamus_size, 1)


def _probability(value, where: str) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise AnatomyError(f"{where}: probability {value!r} is not a number") from None
    if not (0.0 <= p <= 1.0):  # also refuses NaN
        raise AnatomyError(f"{where}: probability {p} is outside [0, 1]")
    return p


def anatomy_from_dict(table: dict, source: str = "<dict>") -> Anatomy:
    """Build and validate an :class:`Anatomy` from the parsed JSON table."""
    try:
        rows = table["populations"]
        connections = table["connections"]
        thalamus = table["thalamus"]
    except (KeyError, TypeError) as err:
        raise AnatomyError(f"{source}: missing section {err}; expected 'populations', "
                           "'connections' and 'thalamus'") from None
    populations, offset = [], 0
    for i, row in enumerate(rows):
        try:
            name, layer, ptype = str(row["name"]), str(row["layer"]), str(row["type"])
            size, rate = int(row["size"]), float(row["reference_rate"])
        except (KeyError, TypeError, ValueError) as err:
            raise AnatomyError(f"{source}: population {i} is malformed ({err!r}); it needs "
                               "name, layer, type, size and reference_rate") from None
        if ptype not in ("E", "I"):
            raise AnatomyError(f"{source}: population {name} has type {ptype!r}, not 'E' or 'I'")
        if size <= 0:
            raise AnatomyError(f"{source}: population {name} has size {size}")
        populations.append(Population(i, name, layer, ptype, size, rate, offset))
        offset += size
    names = [p.name for p in populations]
    if len(set(names)) != len(names):
        raise AnatomyError(f"{source}: population names are not unique: {names}")
    thal_name = str(thalamus.get("name", "VPM"))
    index = {n: i for i, n in enumerate(names)}

    p_rec = np.zeros((len(names), len(names)))
    p_thal = np.zeros(len(names))
    for pre, row in connections.items():
        if pre != thal_name and pre not in index:
            raise AnatomyError(f"{source}: connections from unknown population {pre!r}; "
                               f"known: {names + [thal_name]}")
        for post, value in row.items():
            if post not in index:
                raise AnatomyError(f"{source}: connection {pre} -> {post}: unknown "
                                   f"population {post!r}; known: {names}")
            p = _probability(value, f"{source}: connection {pre} -> {post}")
            if pre == thal_name:
                p_thal[index[post]] = p
            else:
                p_rec[index[post], index[pre]] = p
    missing = [n for n in names if n not in connections]
    if missing:
        raise AnatomyError(f"{source}: no outgoing connections listed for {missing}; every "
                           "population must appear in 'connections' (list it with {} if it "
                           "projects nowhere)")
    return Anatomy(tuple(populations), p_rec, p_thal, int(thalamus.get("size", 200)),
                   str(table.get("provenance", "")))


def load_anatomy(path: str | Path | None = None) -> Anatomy:
    """Read the anatomy table (default ``data/anatomy.json``) and validate it."""
    path = Path(path) if path is not None else DEFAULT_ANATOMY
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnatomyError(f"anatomy table {path} not found; it ships with the project "
                           "in data/anatomy.json") from None
    except json.JSONDecodeError as err:
        raise AnatomyError(f"anatomy table {path} is not valid JSON: {err}") from None
    return anatomy_from_dict(table, str(path))
