"""Edge runtime: runs Akida 1.0 bundles on the board or on our NumPy event simulator.

An edge host installs only this package (no torch, no exporter).
"""

__version__ = "0.1.0"
