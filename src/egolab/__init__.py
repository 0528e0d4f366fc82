"""egolab: an experiment framework for egocentric video understanding.

The package import is light on purpose: each task imports its own heavy dependencies.
"""

__version__ = "0.1.0"
