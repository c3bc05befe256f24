"""relcert: model release certification.

The importable library behind the `model_release_certification` DAG. It never imports
Airflow, so every part can be used, tested and benchmarked without it.
"""

__version__ = "0.1.0"
