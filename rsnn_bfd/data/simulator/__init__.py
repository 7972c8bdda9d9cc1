"""The whisker sweep simulator that makes a dataset of the original files' layout: parameters,
the whisker array, the objects, one object's sweeps, the dataset, its statistics."""
