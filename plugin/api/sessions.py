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

from plugin.api.body_limit import BODY_TOO_LARGE_RESPONSE
from plugin.api.dependencies import ADMIN, PipelineDep
from plugin.api.error_handlers import request_validation_error
from plugin.api.rate_limit import RATE_LIMITED_RESPONSE
from plugin.events import Event, EventBatch, EventRecorder, RecordResult, session_summary
from plugin.models import SessionId

router = APIRouter()

_SINGLE_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


@router.post(
    "/events",
    response_model=RecordResult,
    responses={**RATE_LIMITED_RESPONSE, **BODY_TOO_LARGE_RESPONSE},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/EventBatch"},
                {"$ref": "#/components/schemas/ClickEvent"},
            ]}}},
        }
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


@router.get("/sessions/{session_id}", dependencies=ADMIN)
def get_session(session_id: SessionId, pipeline: PipelineDep) -> dict[str, Any]:
    """What the server holds of a session: affinities, price band, recent events."""
    state = pipeline.session_store.get(session_id)
    events = pipeline.session_store.events(session_id, limit=100)
    if state is None and not events:
        raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
    return session_summary(state, events)


@router.delete("/sessions/{session_id}", status_code=204, dependencies=ADMIN)
def delete_session(session_id: SessionId, pipeline: PipelineDep) -> Response:
    """Forget a session and its events."""
    if not pipeline.session_store.delete(session_id):
        raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
    return Response(status_code=204)
