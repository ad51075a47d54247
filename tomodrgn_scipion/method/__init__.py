"""The tomoDRGN method itself, free of any Scipion import.

Modules
-------
star, stacks, dataset
    RELION 3.0 image-series star files, MRC stacks and the particle tilt-series view of both.
fft, transforms, lattice, ctf, dose, interp
    The imaging physics shared by simulation, reconstruction and training.
phantom, simulate, backproject, fsc
    Built-in test volumes, Warp-style simulation, Fourier back-projection and resolution.
cli
    The ``tomodrgn-scipion`` command line.
"""
