"""netdiff's local web app (``netdiff app``): Streamlit pages over the Python API.

Modules, by role:
  workspace.py   the one folder the app reads and writes; every path from the browser goes
                 through ``inside`` (refused when it leaves the folder), uploads are size-limited
  jobs.py        long work in a subprocess per job (progress, cancel, state kept in the workspace)
  worker.py      the subprocess: runs one task and writes its progress and result as JSON
  tasks.py       the tasks (convert, train, generate, evaluate, telemetry): calls into netdiff's API
  ui.py          shared page pieces (job panel, folder pickers, report rendering)
  views/         one module per page: captures, generate, evaluate, telemetry
  main.py        the script ``streamlit run`` is given: the page navigation

Nothing here imports streamlit at package import; no pickle anywhere (results are JSON, PNG,
pcap, CSV/Parquet and safetensors files; Streamlit's pickling caches are not used).
"""
