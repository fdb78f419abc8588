"""Installation of the sta suite (distribution ``sta-tomo``, import package ``sta``)."""

import glob
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "src", "sta", "__init__.py")) as fh:
    VERSION = re.search(r'__version__ = "([^"]+)"', fh.read()).group(1)

# One console script per sta tool: name -> module in sta.commands (each has main(argv)).
TOOLS = {
    "sta_simulate": "simulate",
    "sta_demo": "demo",
    "sta_subtomo": "subtomo",
    "sta_reconstruct_particle": "reconstruct_particle",
    "sta_refine": "refine",
    "sta_mask_create": "mask_create",
    "sta_postprocess": "postprocess",
    "sta_local_resolution": "local_resolution",
    "sta_star_handler": "star_handler",
    "sta_submit": "submit",
    "sta_relion_aliases": "relion_aliases",
}

setup(
    name="sta-tomo",
    version=VERSION,
    description="Subtomogram averaging for cryo-ET: drop-in replacements for RELION 5 tomography programs",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "mrcfile>=1.4",
        "pyfftw>=0.13",
        "h5py>=3.8",
        "gemmi>=0.6",
        "pandas>=1.5",
        "matplotlib>=3.6",
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1", "mpich"],
        "gpu": ["cupy-cuda12x"],
        "test": ["pytest>=7", "starfile>=0.5", "healpy>=1.16"],
    },
    data_files=[("share/sta/jobscripts", sorted(glob.glob("jobscripts/*.sh")))],
    entry_points={
        "console_scripts": [f"{name} = sta.commands.{mod}:main" for name, mod in TOOLS.items()],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
)
