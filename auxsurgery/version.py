"""The package version: a leaf module, so that anything can import it without importing the package's API."""
__version__ = "0.2.0"
