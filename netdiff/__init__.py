"""netdiff: synthetic network traffic, from pcap to nPrint to image and back.

Importing the package is cheap (no torch); the Python API mirrors the CLI (see README).
"""
__version__ = "0.1.0"
