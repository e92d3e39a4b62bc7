"""The OpenAPI description of the HTTP recording API, served at /openapi.json."""

from __future__ import annotations

from .. import __version__

_CALL_ARGS = {
    "extenOrUniqueId": "an extension (410) or a unique call id (1795825765.3 or system-1795825765.3)",
    "agentLoginName": "a user's login; for start, the owner of the leg; for the others, who must be allowed to",
    "tag": "written to the call record as its External Reference (start only; up to 255 characters)",
    "apiKey": "the service's apiKey",
}
_ERRORS = {
    "400": "a bad or missing argument, or an unknown agent",
    "403": "a missing or wrong apiKey, or a user who may not do this",
    "404": "no live channel has that extension or unique id",
    "405": "only POST is allowed (the Allow header says so)",
    "409": "several live channels fit the extension (the message names them), or nothing is recorded there",
    "502": "Asterisk refused the action",
    "503": "Asterisk's manager interface or the database cannot be reached now",
}
_LEG_FIELDS = ["UniqueId", "Leg", "Start", "Duration", "Tag", "Username", "CallRecordId", "File", "Ownership",
               "End", "State", "Recorded", "RecordingId"]


def _text(description: str) -> dict:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _call(summary: str, names: tuple[str, ...]) -> dict:
    parameters = [
        {"name": n, "in": "query", "required": n in ("extenOrUniqueId", "apiKey"), "schema": {"type": "string"},
         "description": _CALL_ARGS[n]}
        for n in names
    ]
    return {"post": {
        "summary": summary,
        "parameters": parameters,
        "requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {n: {"type": "string"} for n in names}}}}},
        "responses": {"200": {"description": "done", "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/Outcome"}}}}, **{code: _text(d) for code, d in _ERRORS.items()}},
    }}


def _retrieve(summary: str, key: str) -> dict:
    return {"get": {
        "summary": summary,
        "parameters": [
            {"name": key, "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "apiKey", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "loginName", "in": "query", "required": True, "schema": {"type": "string"},
             "description": "who asks: owners see their own legs, Recording Manager members every leg"},
        ],
        "responses": {
            "200": {"description": "one entry per visible leg", "content": {"application/json": {"schema": {
                "type": "array", "items": {"$ref": "#/components/schemas/Leg"}}}}},
            "400": _text("a missing argument"),
            "403": _text("a missing or wrong apiKey, or an unknown loginName"),
        },
    }}


def spec() -> dict:
    calls = "/servicemanager/rest/CallManagementAPI"
    everything = ("extenOrUniqueId", "agentLoginName", "tag", "apiKey")
    others = ("extenOrUniqueId", "agentLoginName", "apiKey")
    return {
        "openapi": "3.0.3",
        "info": {"title": "recording-agi HTTP recording API", "version": __version__},
        "paths": {
            f"{calls}/start": _call("Start recording a live channel by extension or unique call id", everything),
            f"{calls}/stop": _call("Stop the recording this service started on that channel", others),
            f"{calls}/pause": _call("Pause the recording (for card payments)", others),
            f"{calls}/resume": _call("Resume a paused recording", others),
            "/njadmin/rest/RecordingAPI/retrieveMetaData": _retrieve("Recording legs by tag", "tag"),
            "/njadmin/rest/RecordingAPI/retrieveMetaDataByUniqueId": _retrieve(
                "Recording legs by unique call id", "uniqueId"),
        },
        "components": {"schemas": {
            "Outcome": {"type": "object", "properties": {
                "status": {"type": "string", "enum": ["STARTED", "ALREADY_RECORDING", "STOPPED", "PAUSED", "RESUMED"]},
                "recordingId": {"type": "string"}, "uniqueId": {"type": "string"}, "channel": {"type": "string"},
                "leg": {"type": "integer"}, "file": {"type": "string"}, "deferred": {"type": "boolean"},
            }},
            "Leg": {"type": "object", "properties": {
                name: {"type": "integer" if name in ("Leg", "CallRecordId") else
                       "number" if name in ("Duration", "Recorded") else "string", "nullable": True}
                for name in _LEG_FIELDS
            }},
        }},
    }
