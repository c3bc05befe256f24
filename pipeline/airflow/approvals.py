"""What a deployment DAG checks first in the approval events it was triggered by.

An approval event's extra (`pipeline.airflow.outcomes.EVENT_KEYS`) is written by whoever
emits the event, and Airflow lets more than relcert's `decision` task emit one: any DAG's
task with the Asset as an outlet, and any user allowed to post Asset events through the REST
API. So `verify_approvals` trusts nothing of the extra that it can check elsewhere:

1. **the source**, as Airflow recorded it (not the extra): the event must come from the
   certification DAG's `decision` task, in a run whose id the extra repeats; an event posted
   through the REST API (`from_rest_api`, no source task) or emitted by another DAG or
   task is refused;
2. **the decision**, from the run's own `report.json`, re-read from the artifacts store
   (through the store's consistent path, as the tasks read it) in the folder of that source
   run: it must be one the consumer accepts (APPROVED by default);
3. **the package**: the one that report names, inside the run's folder; the event must name
   that same file, and its sha256, computed from the store, must be the one the
   certification recorded in the event (and in the report's image record, when it has one).

Any bad event fails the task at once with AirflowFailException (no retry: a forged or
broken event does not get better), naming every bad event and why; nothing is returned
then, so no rollout runs on a mix. A location outside the store is one such reason.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pipeline.airflow.outcomes import DECISION_TASK_ID, EVENT_KEYS, approval_uri
from pipeline.names import APPROVED, DAG_ID, DECISIONS

__all__ = ["verify_approvals"]


class _Refused(Exception):
    """One approval event that must not be deployed (the message says why)."""


def verify_approvals(
    events: Iterable[Any], *, dag_id: str = DAG_ID, accept: Collection[str] = (APPROVED,)
) -> list[dict[str, Any]]:
    """Verify the approval events a deployment DAG was triggered by (`triggering_asset_events`
    of its approval Asset): source, decision and package, each from Airflow's record or the
    store (see the module doc). Returns one record per event (the package's location and
    sha256, the run, the models and versions from its report); raises AirflowFailException
    naming every refused event. `accept`: the report decisions this consumer deploys."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline.storage import ArtifactStore

    unknown = sorted(set(accept) - set(DECISIONS))
    if unknown or not accept:
        raise ValueError(f"accept: expected some of {list(DECISIONS)}, got {list(accept)}")
    store = ArtifactStore.from_location()
    verified, refused = [], []
    events = list(events)
    for event in events:
        try:
            verified.append(_verify(store, event, dag_id, tuple(accept)))
        except _Refused as exc:
            refused.append(str(exc))
    if refused:
        raise AirflowFailException(
            f"{len(refused)} of {len(events)} approval event(s) refused, nothing verified: "
            + "; ".join(refused)
        )
    return verified


def _describe(event: Any) -> str:
    asset = getattr(getattr(event, "asset", None), "uri", None)
    source = f"{event.source_dag_id}.{event.source_task_id} run {event.source_run_id}"
    return f"approval event of {asset} from {source}"


def _check_source(event: Any, extra: Mapping[str, Any], dag_id: str) -> None:
    """Where Airflow says the event came from: `dag_id`'s decision task, nothing else."""
    if extra.get("from_rest_api") or event.source_task_id is None:
        raise _Refused("posted through the REST API, not emitted by a certification run")
    if (event.source_dag_id, event.source_task_id) != (dag_id, DECISION_TASK_ID):
        raise _Refused(f"emitted by a task other than {dag_id}.{DECISION_TASK_ID}")
    missing = [key for key in EVENT_KEYS if key not in extra]
    if missing:
        raise _Refused(f"its extra lacks {missing}")
    if (extra["dag_id"], extra["run_id"]) != (dag_id, event.source_run_id):
        raise _Refused(
            f"its extra names run {extra['dag_id']}/{extra['run_id']}, but it was emitted "
            f"by run {dag_id}/{event.source_run_id}"
        )


def _check_models(event: Any, report: Mapping[str, Any], dag_id: str) -> None:
    """The run certified exactly the models of the Asset the event is of."""
    names = sorted(_versions(report))
    uri = getattr(event.asset, "uri", None)
    if not names or approval_uri(dag_id, names) != uri:
        raise _Refused(f"the run's report.json certifies {names}, not {uri}")


def _versions(report: Mapping[str, Any]) -> dict[str, Any]:
    """{model name: version} of report.json's `models` (one entry per format)."""
    models = report.get("models")
    if not isinstance(models, list):
        return {}
    return {
        str(m["name"]): m.get("version") for m in models if isinstance(m, dict) and m.get("name")
    }


def _read_report(store: Any, location: str) -> dict[str, Any]:
    try:
        data = json.loads(store.read_bytes(store.join(location, "report.json")))
    except FileNotFoundError:
        raise _Refused(f"the run has no report.json in the artifacts store ({location})") from None
    except ValueError as exc:
        raise _Refused(f"the run's report.json is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _Refused("the run's report.json is not a JSON object")
    return data


def _package_location(store: Any, location: str, report: Mapping[str, Any], named: Any) -> str:
    """The package the report records (inside the run's folder); the event must name it."""
    from pipeline.storage import StoreError

    recorded = report.get("package")
    if not isinstance(recorded, str) or not recorded:
        raise _Refused("the run's report.json records no package")
    try:
        package = store.join(location, recorded)
    except StoreError as exc:
        raise _Refused(f"the package report.json records is outside the run: {exc}") from None
    if not isinstance(named, str) or not named:
        raise _Refused("the event names no package")
    try:
        same = store.fs_path(named) == store.fs_path(package)
    except StoreError as exc:  # outside the store, or not a location of it
        raise _Refused(f"its package {named!r}: {exc}") from None
    if not same:
        raise _Refused(f"its package {named} is not the one report.json records ({package})")
    return package


def _verify(store: Any, event: Any, dag_id: str, accept: tuple[str, ...]) -> dict[str, Any]:
    from pipeline.orchestrate import run_key
    from pipeline.storage import StoreError

    try:
        extra = dict(event.extra or {})
        _check_source(event, extra, dag_id)
        location = store.run_location(dag_id, run_key(event.source_run_id))
        with store.reading(location):
            report = _read_report(store, location)
            decision = report.get("decision")
            if decision not in accept:
                raise _Refused(f"the run's report.json says {decision!r}; accepted: {list(accept)}")
            _check_models(event, report, dag_id)
            package = _package_location(store, location, report, extra["package"])
            try:
                digest = store.sha256(package)
            except FileNotFoundError:
                raise _Refused(f"its package {package} is not in the artifacts store") from None
    except _Refused as exc:
        raise _Refused(f"{_describe(event)}: {exc}") from None
    except (StoreError, OSError, AttributeError, TypeError) as exc:
        raise _Refused(f"{_describe(event)}: cannot be checked ({exc})") from None
    image = report.get("image") if isinstance(report.get("image"), dict) else {}
    for what, recorded in (
        ("the certification recorded", extra["package_sha256"]),
        ("its image was built from", image.get("package_sha256", digest)),
    ):
        if recorded != digest:
            raise _Refused(
                f"{_describe(event)}: package {package} has sha256 {digest} in the store, but "
                f"{what} {recorded}"
            )
    return {
        "run_id": event.source_run_id,
        "snapshot_date": extra["snapshot_date"],
        "decision": decision,
        "models": _versions(report),
        "package": package,
        "sha256": digest,
        "report_html": store.join(location, "report.html"),
        "verified": True,
    }
