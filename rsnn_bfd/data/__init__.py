"""The whisker data: file layout and reader, encodings, datasets, folds, the simulator, and
generating a missing dataset."""
