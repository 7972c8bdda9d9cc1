"""Network files: the checkpoint format, and the published networks' pickles read without
running code."""
