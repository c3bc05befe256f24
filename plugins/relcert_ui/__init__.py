"""Helpers of the relcert Airflow plugin (`plugins/relcert_plugin.py`).

- `artifacts`: finds the certification runs on disk and resolves every served path strictly
  inside the artifacts root (no Airflow, no FastAPI).
- `render`: the HTML of the certifications page and its trend plot (matplotlib, lazily).
- `web`: the FastAPI app mounted by the plugin, with Airflow's auth manager on every route.

`plugins/.airflowignore` keeps Airflow's plugin loader from importing these files as
top-level plugin modules; `relcert_plugin.py` imports them as the `relcert_ui` package.
"""
