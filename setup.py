"""geodiffusion: diffusion models on geometric domains."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "geodiffusion" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="geodiffusion",
    version=version["__version__"],
    description="Diffusion models on geometric domains: groups, manifolds, GP function spaces, SE(3)-invariant point clouds",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["geodiffusion", "geodiffusion.*"]),
    package_data={"geodiffusion": ["py.typed", "data/files/**/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1,<3",
        "torch-geometric>=2.4,<3",
        "e3nn>=0.5,<0.7",
        "torchsde>=0.2.6,<0.3",
        "torchdiffeq>=0.2.3,<0.3",
        "pydantic>=2.5,<3",
        "hypothesis>=6.80,<7",
        "numpy>=1.24",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pyyaml>=6",
        "rdkit>=2023.9",
        "scikit-learn>=1.3",
        "scikit-image>=0.21",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2", "ruff>=0.5", "tox>=4", "mpmath>=1.3"],
        "docs": ["sphinx>=7", "myst-parser>=2"],
        # only scripts/make_conformer_dataset.py (GFN2-xTB refinement of conformer references)
        "xtb": ["tblite==0.8.0"],
    },
    entry_points={"console_scripts": ["geodiffusion=geodiffusion.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "License :: OSI Approved :: MIT License",
    ],
)
