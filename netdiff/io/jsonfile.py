"""Reading the project's small JSON files (timing models, class priors) with one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

from netdiff.errors import NetdiffError


def read_json_file(path, what: str):
    """The parsed content of ``path``; a missing, unreadable or malformed file is a one-line
    NetdiffError naming ``what`` it should have been ("timing model", "priors file")."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NetdiffError(f"{path}: no such {what}") from None
    except OSError as e:
        raise NetdiffError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except ValueError as e:
        raise NetdiffError(f"{path}: not a JSON {what} ({e})") from None
