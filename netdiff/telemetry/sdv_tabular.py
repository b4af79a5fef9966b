"""SDV's single-table synthesizers, TVAE and CTGAN, as per-row telemetry baselines.

For per-row data (each row a record: network usage per user or per interval, the table SDV's
own examples generate) and as a yardstick for sequence models: every row (attributes and
features of one time step) is modelled on its own, with no time dependence. A generated
sequence takes its length from the real length histogram, its rows from the synthesizer in
order, and its attributes from its first row. One keyless series (no ``--sequence-key``, no
``--window``) is one sequence, so ``--sample-count 1`` (the default) writes as many rows as the
real file.

Optional extra ``netdiff[sdv]``, imported lazily. SDV models can only be pickled and netdiff
never unpickles, so, as with PAR, ``train --model tvae|ctgan --sample-output FILE`` trains and
samples in one go and saves no model.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd

from netdiff.errors import NetdiffError
from netdiff.telemetry.common import merge_config, stamp_times, time_info
from netdiff.telemetry.data import ColumnRoles, TelemetryData, from_long, to_frame


@dataclass
class TabularConfig:
    epochs: int = 300
    batch_size: int = 500  # CTGAN: rounded up to a multiple of its pac (10)
    seed: int = 0
    verbose: bool = False


def _seed(seed: int) -> None:
    import torch

    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _SDVTabular:
    kind = ""
    synthesizer = ""
    needs_sequences = False  # per-row data may be one series

    def __init__(self, config: TabularConfig | dict | None = None):
        self.config = config if isinstance(config, TabularConfig) else merge_config(TabularConfig, config)
        self.history: dict = {}

    def fit(self, data: TelemetryData, progress: bool | None = None):
        try:
            import sdv.single_table as single
            from sdv.metadata import Metadata
        except ImportError as e:
            raise NetdiffError(f"the {self.kind.upper()} baseline needs SDV: pip install 'netdiff[sdv]'") from e
        import torch

        self.template = data
        frame = to_frame(data, "sequence_id").drop(columns=["sequence_id"])
        kinds = {**data.attribute_kinds, **data.feature_kinds}
        meta = Metadata.load_from_dict({"tables": {"table": {"columns": {
            c: {"sdtype": "categorical" if kinds[c] == "categorical" else "numerical"} for c in frame.columns}}}})
        cls = getattr(single, self.synthesizer)
        params = inspect.signature(cls.__init__).parameters
        batch = self.config.batch_size
        if "pac" in params:
            batch = -(-batch // 10) * 10
        options = {"epochs": self.config.epochs, "batch_size": batch, "verbose": self.config.verbose}
        gpu = torch.cuda.is_available()
        options.update({"enable_gpu": gpu} if "enable_gpu" in params else {"cuda": gpu} if "cuda" in params else {})
        _seed(self.config.seed)
        self.model = cls(meta, **options)
        self.model.fit({"table": frame})  # SDV 2 takes a dict of tables (as PAR does)
        lengths, counts = np.unique(data.lengths, return_counts=True)
        self.lengths, self.length_p = lengths, counts / counts.sum()
        self.times = time_info(data)
        return self

    def generate(self, count: int, seed: int = 0) -> TelemetryData:
        if count < 1:
            raise NetdiffError("count must be >= 1")
        rng = np.random.default_rng(seed)
        lengths = rng.choice(self.lengths, size=count, p=self.length_p)
        _seed(seed)
        if hasattr(self.model, "_set_random_state"):  # SDV otherwise samples from a fixed seed
            self.model._set_random_state(seed)
        rows = self.model.sample(num_rows=int(lengths.sum()))
        if isinstance(rows, dict):  # SDV 2: a dict of tables
            rows = next(iter(rows.values()))
        rows = rows.reset_index(drop=True)
        seq = np.repeat(np.arange(count), lengths)
        d = self.template
        first = rows.groupby(seq).transform("first")
        for a in d.attribute_names:  # a sequence's attributes: its first row's
            rows[a] = first[a]
        rows.insert(0, "sequence_id", pd.Series(seq).map(lambda i: f"syn{i}"))
        rows.insert(1, "step", np.arange(len(rows)) - np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths))
        kinds = {**d.attribute_kinds, **d.feature_kinds}
        roles = ColumnRoles(sequence_key=["sequence_id"], time_column="step", time_format="number",
                            attributes=d.attribute_names, features=d.feature_names,
                            categorical=[c for c in kinds if kinds[c] == "categorical"])
        out = from_long(rows, roles)
        order = np.argsort([int(k[3:]) for k in out.keys], kind="stable")  # syn10 after syn9
        out = out.subset(order)
        return stamp_times(dataclasses.replace(out, times=None, time_is_datetime=False), self.times)

    def save(self, directory, extra=None):
        raise NetdiffError(f"SDV {self.kind.upper()} models can only be pickled and netdiff never unpickles: "
                           "use --sample-output to sample right after training")


class TVAEBaseline(_SDVTabular):
    kind, synthesizer = "tvae", "TVAESynthesizer"


class CTGANBaseline(_SDVTabular):
    kind, synthesizer = "ctgan", "CTGANSynthesizer"
