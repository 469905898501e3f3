"""The package version, in one place: ``bfcl.__version__`` re-exports it and setuptools reads it at build time.

A leaf module (no imports), so any layer can name the version without importing the
package root, which sits above every layer.
"""

__version__ = "0.1.0"
