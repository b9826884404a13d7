"""Killed flow runs become Crashed, by Prefect's own mechanism: heartbeats and a zombie-run automation.

A flow run process that is killed with SIGKILL (an OOM kill, a lost machine) can report nothing, so
its run would stay Running for ever. Prefect's answer (its docs: "detect zombie flows"): every flow
run emits a ``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds,
and an automation on the server marks a run Crashed when neither a heartbeat nor a final state
follows within :data:`SILENCE`. Prefect Cloud ships that automation; a self-hosted server needs it
created, which :func:`ensure_automation` does (once: it is found by name afterwards).

With heartbeats every :data:`HEARTBEAT_SECONDS` (Prefect's minimum) and :data:`SILENCE` of 90 s, a
killed run is Crashed within about two minutes. What the run had started dies with it (the stage
commands' parent-death signal, :mod:`fkp.orchestration.pipeline`), and DVC's lock dies with its
process, so the next run starts at once.
"""

from __future__ import annotations

import os
from datetime import timedelta

#: seconds between a flow run's heartbeats (Prefect's minimum, its default is 180)
HEARTBEAT_SECONDS = 30
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
#: a run silent this long (no heartbeat, no final state) is Crashed
SILENCE = timedelta(seconds=90)
AUTOMATION_NAME = "fkp: crash flow runs that stopped sending heartbeats"
#: the flows it watches. Only ours: a flow run elsewhere on a shared server sends heartbeats at
#: Prefect's default of 180 s, and would be marked Crashed between two of them.
FLOWS = ("retrain", "sweep")
FINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def heartbeat_env() -> dict[str, str]:
    """The environment a flow run process needs to send heartbeats (a value already set is kept)."""
    return {HEARTBEAT_ENV: os.environ.get(HEARTBEAT_ENV) or str(HEARTBEAT_SECONDS)}


def enable_heartbeats() -> None:
    """Heartbeats for flow runs this process starts: in-process (settings) and in subprocesses (env)."""
    from prefect.context import refresh_global_settings_context

    os.environ.update(heartbeat_env())
    refresh_global_settings_context()  # Prefect read its settings at import


def ensure_automation() -> str:
    """Create the zombie-run automation on the configured Prefect server unless it exists; its id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION_NAME)
        if found:
            return str(found[0].id)
        automation = AutomationCore(
            name=AUTOMATION_NAME,
            description="Marks a flow run Crashed when its process stopped sending heartbeats (killed).",
            trigger=EventTrigger(
                posture=Posture.Proactive,
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL_EVENTS)},
                match={"prefect.resource.id": ["prefect.flow-run.*"]},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
                for_each={"prefect.resource.id"},
                threshold=1,
                within=SILENCE,
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {SILENCE.seconds} s: the flow run's process was killed",
                )
            ],
        )
        return str(client.create_automation(automation))
