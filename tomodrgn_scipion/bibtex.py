"""
@article{Powell2024,
title = "Learning structural heterogeneity from cryo-electron sub-tomograms with tomoDRGN",
author = "Powell, Barrett M. and Davis, Joseph H.",
journal = "Nature Methods",
volume = "21",
number = "8",
pages = "1525--1536",
year = "2024",
doi = "10.1038/s41592-024-02210-z",
url = "https://doi.org/10.1038/s41592-024-02210-z"
}

@article{Zhong2021,
title = "CryoDRGN: reconstruction of heterogeneous cryo-EM structures using neural networks",
author = "Zhong, Ellen D. and Bepler, Tristan and Berger, Bonnie and Davis, Joseph H.",
journal = "Nature Methods",
volume = "18",
number = "2",
pages = "176--185",
year = "2021",
doi = "10.1038/s41592-020-01049-4",
url = "https://doi.org/10.1038/s41592-020-01049-4"
}
"""
# Scipion convention: the module docstring above *is* the bibliography.
# pyworkflow parses it with ``pyworkflow.utils.parseBibTex(bibtex.__doc__)``
# when it registers the plugin; the keys are listed in
# ``tomodrgn_scipion.constants`` (CITE_TOMODRGN, CITE_CRYODRGN).
