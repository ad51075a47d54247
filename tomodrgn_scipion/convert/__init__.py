"""Conversion between Scipion objects and the star/mrc files the tomodrgn-scipion CLI reads and writes; none yet."""
