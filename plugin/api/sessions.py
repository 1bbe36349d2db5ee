"""The session routes: events in (`POST /events`), and, for admins, what the server holds of a
session (`GET /sessions/{id}`) and forgetting it (`DELETE /sessions/{id}`).

A session store that fails is `SessionStoreError`, and a batch with impossible events is
`EventValidationError`; the app's error handlers answer both.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter, ValidationError

from plugin.api.dependencies import ADMIN, PipelineDep
from plugin.api.error_handlers import request_validation_error
from plugin.api.responses import ADMIN_ERRORS, error_responses
from plugin.events import Event, EventBatch, EventRecorder, RecordResult, session_summary
from plugin.models import SessionId

router = APIRouter()

_SINGLE_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


#: ``POST /events`` reads its body itself (each problem by its place in the batch), so FastAPI
#: does not describe it: this is the body as OpenAPI shows it, a batch or one event of any type,
#: and the models it refers to, which the app adds to the schema's components.
_EVENTS_BODY = TypeAdapter(EventBatch | Event).json_schema(
    ref_template="#/components/schemas/{model}"
)
EVENT_SCHEMAS: dict[str, Any] = _EVENTS_BODY.pop("$defs")


@router.post(
    "/events",
    response_model=RecordResult,
    responses=error_responses(413, 422, 429, 503),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _EVENTS_BODY}}}
    },
)
async def post_events(request: Request, pipeline: PipelineDep) -> RecordResult:
    """One event, or ``{"events": [...]}`` (at most 1000). All are validated first: on any
    problem nothing is stored and the 422 lists each problem by its place in the batch."""
    try:
        payload = await request.json()
    except ValueError as e:
        raise HTTPException(status_code=422, detail=f"the body is not JSON: {e}") from e
    try:
        if isinstance(payload, dict) and "events" in payload:
            events = EventBatch.model_validate(payload).events
        else:
            events = [_SINGLE_EVENT.validate_python(payload)]
    except ValidationError as e:
        raise request_validation_error(e, "body") from e
    recorder = EventRecorder(pipeline.store, pipeline.session_store)
    return await run_in_threadpool(recorder.record, events)


@router.get("/sessions/{session_id}", dependencies=ADMIN,
            responses=error_responses(*ADMIN_ERRORS, 404, 422, 503))
def get_session(session_id: SessionId, pipeline: PipelineDep) -> dict[str, Any]:
    """What the server holds of a session: affinities, price band, recent events."""
    state = pipeline.session_store.get(session_id)
    events = pipeline.session_store.events(session_id, limit=100)
    if state is None and not events:
        raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
    return session_summary(state, events)


@router.delete("/sessions/{session_id}", status_code=204, dependencies=ADMIN,
               responses=error_responses(*ADMIN_ERRORS, 404, 422, 503))
def delete_session(session_id: SessionId, pipeline: PipelineDep) -> Response:
    """Forget a session and its events."""
    if not pipeline.session_store.delete(session_id):
        raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
    return Response(status_code=204)
