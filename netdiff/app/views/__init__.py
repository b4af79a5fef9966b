"""The app's pages, one module each; each has ``render()`` (the page) and ``TITLE``."""
