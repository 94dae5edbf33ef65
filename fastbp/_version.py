"""The version of fastbp, in one place: ``fastbp.__version__`` and the CLI read it here."""

__version__ = "0.1.0"
