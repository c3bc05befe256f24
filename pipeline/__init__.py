"""relcert: model release certification.

The importable library behind the `model_release_certification` DAG. Only `pipeline.airflow`
imports Airflow; every other part can be used, tested and benchmarked without it.
"""

__version__ = "0.1.0"
