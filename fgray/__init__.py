"""fgray: Ray-distributed sweeps of self-supervised fine-grained image retrieval methods."""

__version__ = "0.1.0"
