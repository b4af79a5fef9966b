"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class NetdiffError(Exception):
    """A problem with the user's input or configuration, with a message that names it."""


class CaptureError(NetdiffError):
    """A capture file that cannot be read (wrong magic, truncated header, unknown link type)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ImageError(NetdiffError):
    """An image that does not fit the layout (size, palette) or lacks what a step needs."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
