"""The paper's analyses of a trained network; ``utils.py`` is their command line.

    statistics   arrays in, numbers out: ANOVA, class proportions, CV, degrees, Pearson r
    recording    running the model: recorded spikes, the untrained twin, constant-input
                 rates, degrees, the CV grid of untrained networks
    figures      ``run_*``: record, compute, plot and write PNG + CSV / JSON per analysis
"""
from .figures import (CLASS_NAMES_DEFAULT, DPI, E_COLOR, I_COLOR, INIT_COLOR, class_names,
                      plot_constant_input, plot_cv_grid, plot_raster, plot_tau_kde, plot_ternary,
                      run_anova, run_cv, run_degree, run_dynamics, run_raster, write_csv,
                      write_json)
from .recording import (_Concat, balanced_indices, constant_input_rates, cv_grid, cv_point,
                        dataset_labels, model_degrees, record_spikes, untrained_like)
from .statistics import (anova_oneway, binned_cv, class_proportions, group_rates, isi_cv, minmax,
                         parse_floats, pearson, selectivity_summary, summary_stats, ternary_xy,
                         weighted_degrees)

ANALYSES = ("anova", "raster", "dynamics", "degree", "cv")
# the files each analysis writes into its output folder (figures.run_*)
ANALYSIS_FILES = {
    "anova": ("anova_selectivity.png", "anova_selectivity.json", "anova_neurons.csv"),
    "raster": ("raster.png", "raster_rates.csv", "raster.json"),
    "dynamics": ("dynamics_tau.png", "dynamics_tau.csv", "dynamics_constant_input.png",
                 "dynamics_constant_input.csv", "dynamics_constant_input.json"),
    "degree": ("degree_distributions.png", "degree.json", "degree.csv"),
    "cv": ("cv_grid.csv", "cv_grid.png"),
}

__all__ = [
    "ANALYSES", "ANALYSIS_FILES", "CLASS_NAMES_DEFAULT", "DPI", "E_COLOR", "I_COLOR", "INIT_COLOR",
    "anova_oneway", "balanced_indices", "binned_cv", "class_names", "class_proportions",
    "constant_input_rates", "cv_grid", "cv_point", "dataset_labels", "group_rates", "isi_cv",
    "minmax", "model_degrees", "parse_floats", "pearson", "plot_constant_input",
    "plot_cv_grid", "plot_raster", "plot_tau_kde", "plot_ternary", "record_spikes",
    "run_anova", "run_cv", "run_degree", "run_dynamics", "run_raster", "selectivity_summary",
    "summary_stats", "ternary_xy", "untrained_like", "weighted_degrees", "write_csv",
    "write_json",
]
