"""The HTTP recording API's operations, each declared once: its method and path, the arguments
it reads, the answers it can give. The router and the argument reader in http.py take their
routes, names and limits from OPERATIONS, and /openapi.json is made from it, so the description
says what the server does. A new operation is one entry here and one handler method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import __version__
from ..domain import LEG_STATES, OWNERSHIP_RULES
from ..service import MAX_LOGIN, MAX_TAG
from ..storage.audio import CONTENT_TYPES, FALLBACK_TYPE

CALLS = "/servicemanager/rest/CallManagementAPI"
RETRIEVAL = "/njadmin/rest/RecordingAPI"
MAX_BODY = 64 * 1024
MAX_TARGET = 150
MAX_LEG_ID = 255
MAX_REASON = 255
# The 1.0 authentication's fields: old integrations still send them; the apiKey replaced them.
LEGACY = ("timeStamp", "hash")
KEY = "apiKey"
# A user's own token (recording-agi users token LOGIN), as the security scheme of the operations
# that show or change recordings: it names the user, so loginName is not needed with it.
TOKEN = "userToken"
# What check_text() accepts: no C0 control character and no DEL (ECMA-262 syntax, for JSON Schema).
CLEAN_TEXT = "^[^\\u0000-\\u001f\\u007f]*$"


@dataclass(frozen=True)
class Argument:
    """One argument, read from the query string or (where the operation takes one) a form
    body, by name without regard to case. The server refuses control characters and values
    longer than ``max_length`` with a 400."""

    name: str
    description: str
    max_length: int
    required: bool = False
    example: str | None = None
    # The only values the handler takes (any other is a 400 naming them); none: any clean text.
    choices: tuple[str, ...] = ()

    def schema(self) -> dict:
        schema = {"type": "string", "maxLength": self.max_length, "pattern": CLEAN_TEXT,
                  "description": self.description}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.required:
            schema["minLength"] = 1
        if self.example is not None:
            schema["example"] = self.example
        return schema


@dataclass(frozen=True)
class Answer:
    """One status an operation answers with: a JSON body when ``schema`` is given, else one
    plain-text sentence (``media`` and ``headers`` for anything else: one media type, or several
    the body may be one of). ``bodyless``: an answer with no body at all (304, 412)."""

    description: str
    schema: dict | None = None
    media: str | tuple[str, ...] | None = None
    headers: dict = field(default_factory=dict)
    bodyless: bool = False

    def describe(self) -> dict:
        described: dict = {"description": self.description}
        if not self.bodyless:
            medias = self.media if isinstance(self.media, tuple) else (
                self.media or ("application/json" if self.schema is not None else "text/plain"),)
            described["content"] = {media: {"schema": self.schema or {"type": "string"}} for media in medias}
        if self.headers:
            described["headers"] = self.headers
        return described


@dataclass(frozen=True)
class Operation:
    """An operation of the API. ``handler`` names the RecordingAPI method that answers it, with
    the request and the arguments read as declared here; ``form``: the arguments may come in
    a form body too; ``parameters``: further OpenAPI parameters the handler reads itself
    (a header, say); ``answers``: the statuses particular to it (COMMON adds the others)."""

    method: str
    path: str
    handler: str
    summary: str
    arguments: tuple[Argument, ...]
    answers: dict[str, Answer]
    form: bool = False
    parameters: tuple[dict, ...] = ()
    # Who asks is proven: by a user's token, or the apiKey with loginName where the CRM is trusted.
    token: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Every argument name the server accepts here (the apiKey and the legacy fields too)."""
        return (*(argument.name for argument in self.arguments), KEY, *LEGACY)


def _call_arguments(tag: bool) -> tuple[Argument, ...]:
    return (
        Argument("extenOrUniqueId", "an extension (410) or a unique call id (1795825765.3 or sys-1795825765.3)",
                 MAX_TARGET, required=True, example="410"),
        Argument("agentLoginName", "a user's login: for start, who owns the leg (see the README); for the "
                 "others, who must be allowed to (its owner or a Recording Manager)", MAX_LOGIN, example="fred"),
        *([Argument("tag", "written to the call record as its External Reference, and to the leg", MAX_TAG,
                    example="CRM-1")] if tag else []),
    )


# Who asks, in retrieval and after the call: the access rule is the same for both.
_ASKER = Argument("loginName", "who asks, with the apiKey where RECORDING_TRUST_CRM_LOGIN_NAME trusts the CRM to say "
                  "so (required then); not needed with a user's token, which names its user. Owners see their own "
                  "legs, Recording Manager members every leg", MAX_LOGIN, example="boss")


def _retrieval_arguments(key: Argument) -> tuple[Argument, ...]:
    return (key, _ASKER)


_OUTCOME = {"$ref": "#/components/schemas/Outcome"}
_LEGS = {"type": "array", "items": {"$ref": "#/components/schemas/Leg"}}
_HOLD = {"$ref": "#/components/schemas/HoldOutcome"}
# After the call: a leg by its id, for the user who asks.
_LEG_ID = Argument("recordingId", "a leg's RecordingId, as retrieveMetaData gives it", MAX_LEG_ID, required=True,
                   example="5f0c2a9e7d3b4c1a8e6f0b2d4c6a8e0f")
_AUDIO = tuple(sorted({*CONTENT_TYPES.values(), FALLBACK_TYPE}))
_BINARY = {"type": "string", "format": "binary"}
_RANGE_HEADERS = {"Content-Range": {"required": True, "schema": {"type": "string"},
                                    "description": "bytes START-END/SIZE; for a 416, bytes */SIZE"}}
_PLAY = Operation(
    "GET", f"{RETRIEVAL}/retrieveRecording", "recording",
    "Play or download a leg's recording once the leg has ended (a Range gets 206, so a player can seek); the "
    "service must see the monitor directory (the Asterisk host, or a share: RECORDING_MONITOR_MOUNT)",
    (_LEG_ID, _ASKER),
    {
        "200": Answer("the whole file", _BINARY, media=_AUDIO),
        "206": Answer("the part named by Range", _BINARY, media=_AUDIO, headers=_RANGE_HEADERS),
        "304": Answer("not modified since the If-None-Match or If-Modified-Since given", bodyless=True),
        "404": Answer("no leg has that id, or the leg has no file: it recorded nothing, its audio was or is "
                      "being purged, or the file is gone (the sentence says which, and where it looked)"),
        "409": Answer("the leg is still recording"),
        "412": Answer("an If-Match or If-Unmodified-Since given does not hold", bodyless=True),
        "416": Answer("the Range cannot be read, or starts past the end of the file", headers=_RANGE_HEADERS),
        "503": Answer("the database cannot be reached, or the monitor directory cannot be seen from this host"),
    },
    parameters=({"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "bytes=START-END, bytes=START- or bytes=-LENGTH: only that part of the file"},),
    token=True,
)
_HOLDING = Operation(
    "POST", f"{RETRIEVAL}/holdRecording", "hold",
    "Place or release a legal hold on a leg (Recording Manager members only): a held leg's audio is never "
    "purged; a leg whose purge has begun, or is done, cannot be held",
    (_LEG_ID, _ASKER,
     Argument("release", "true to release the hold instead of placing it (default false)", 5,
              choices=("true", "false")),
     Argument("reason", "why the leg is held, e.g. a case reference", MAX_REASON, example="case 2026-17")),
    {
        "200": Answer("the leg as it is now, and what was done", _HOLD),
        "404": Answer("no leg has that id"),
        "409": Answer("the leg has no audio left to hold: it recorded nothing, or its purge has begun or is done"),
        "503": Answer("the database cannot be reached"),
    },
    form=True,
    token=True,
)
_CALL_ANSWERS = {
    "404": Answer("no live channel has that extension or unique id"),
    "409": Answer("several live channels fit the extension (the sentence names them; give the unique id), "
                  "or this service records nothing there"),
    "502": Answer("Asterisk refused the action"),
}


def _call(name: str, summary: str, tag: bool = False) -> Operation:
    return Operation(
        "POST", f"{CALLS}/{name}", name, summary, _call_arguments(tag),
        {"200": Answer("done: what the service did, on which channel and leg", _OUTCOME), **_CALL_ANSWERS},
        form=True,
    )


OPERATIONS = (
    _call("start", "Start recording a live channel by extension or unique call id", tag=True),
    _call("stop", "Stop the recording this service started on that channel"),
    _call("pause", "Pause the recording (for card payments); pausing a paused leg changes nothing"),
    _call("resume", "Resume a paused recording; resuming a recording leg changes nothing"),
    Operation(
        "GET", f"{RETRIEVAL}/retrieveMetaData", "by_tag", "Recording legs by tag",
        _retrieval_arguments(Argument("tag", "the leg's tag, or its call's External Reference", MAX_TAG,
                                      required=True, example="CRM-1")),
        {"200": Answer("one entry per leg the asking user may see (none: an empty list)", _LEGS)},
        token=True,
    ),
    Operation(
        "GET", f"{RETRIEVAL}/retrieveMetaDataByUniqueId", "by_unique_id", "Recording legs by unique call id",
        _retrieval_arguments(Argument("uniqueId", "the call's unique id", MAX_TARGET, required=True,
                                      example="1795825765.3")),
        {"200": Answer("one entry per leg the asking user may see (none: an empty list)", _LEGS)},
        token=True,
    ),
    _PLAY,
    _HOLDING,
)

COMMON = {
    "400": Answer("a bad, missing, unknown or repeated argument (given twice with different values), an "
                  "unknown agent, loginName missing with the apiKey, an Authorization header that is not Bearer, "
                  "or a query string or body that cannot be read"),
    "403": Answer("a missing or wrong apiKey or token, a user who may not do this (or an unknown loginName), the "
                  "apiKey without a token where the CRM is not trusted to name the user, or a client that is not "
                  "on the service's allow list"),
    "405": Answer("this method is not served here (the Allow header names the one that is)",
                  headers={"Allow": {"required": True, "schema": {"type": "string"}}}),
    "500": Answer("the database refused the write, or an internal error (the service's log says which)"),
    "503": Answer("Asterisk's manager interface or the database cannot be reached now"),
}
FORM_ANSWERS = {
    "413": Answer(f"the body is larger than {MAX_BODY} bytes"),
    "415": Answer("the body is neither application/x-www-form-urlencoded nor multipart/form-data, or not "
                  "in UTF-8"),
}


def _parameters(operation: Operation) -> list[dict]:
    # NOTE: one exploded form-style object stands for the whole query string, so that the
    # description can say what OpenAPI cannot say of single parameters: no other name is
    # accepted (additionalProperties: false). The apiKey is the security scheme's.
    return [
        {"name": "arguments", "in": "query", "required": True, "style": "form", "explode": True,
         "description": "the arguments, each as its own name=value pair of the query string (UTF-8, "
                        "percent-encoded); names are matched without regard to case",
         "schema": _object(operation, body=False)},
        *operation.parameters,
    ]


def _object(operation: Operation, *, body: bool) -> dict:
    """The arguments as one object: of the query string (the required ones required), or of a
    form body (which may also carry the apiKey, and need not repeat what the query string has)."""
    properties = {argument.name: argument.schema() for argument in operation.arguments}
    if body:
        properties[KEY] = {"type": "string", "description": "the apiKey, when it is not in the query string"}
    for name in LEGACY:
        properties[name] = {"type": "string", "deprecated": True,
                            "description": "a field of the vendor's 1.0 authentication: accepted and ignored"}
    described = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [argument.name for argument in operation.arguments if argument.required]
    if required and not body:
        described["required"] = required
    return described


def _describe(operation: Operation) -> dict:
    answers = {**COMMON, **(FORM_ANSWERS if operation.form else {}), **operation.answers}
    described = {
        "operationId": operation.handler,
        "summary": operation.summary,
        "parameters": _parameters(operation),
        "responses": {status: answers[status].describe() for status in sorted(answers)},
    }
    if operation.token:
        described["security"] = [{TOKEN: []}, {KEY: []}]
    if operation.form:
        described["requestBody"] = {
            "required": False,
            "description": "the same arguments as a form body instead of (or as well as) the query string; "
                           "an argument given in both must have the same value in both",
            "content": {media: {"schema": _object(operation, body=True)}
                        for media in ("application/x-www-form-urlencoded", "multipart/form-data")},
        }
    return described


def _schemas() -> dict:
    text, nullable = {"type": "string"}, {"type": "string", "nullable": True}
    when = {"type": "string", "format": "date-time"}
    seconds = {"type": "number", "minimum": 0}
    leg = {
        "UniqueId": text, "Leg": {"type": "integer", "minimum": 1}, "Start": when, "Duration": seconds,
        "Tag": nullable, "Username": {**nullable, "description": "the owner's login; null: default ownership"},
        "CallRecordId": {"type": "integer"}, "File": text,
        "Ownership": {"type": "string", "enum": list(OWNERSHIP_RULES)},
        "End": {**when, "nullable": True}, "State": {"type": "string", "enum": list(LEG_STATES)},
        "Recorded": {**seconds, "description": "the duration less the paused spans"}, "RecordingId": text,
        # After the call:
        "RecordingUrl": {**nullable, "description": "retrieveRecording for this leg (add the service's address, "
                         "apiKey and loginName); null: the leg has no audio (it recorded nothing, or was purged)"},
        "FileSize": {"type": "integer", "minimum": 0, "nullable": True,
                     "description": "bytes of the complete file; null: not hashed yet"},
        "FileSha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "nullable": True},
        "HashedAt": {**when, "nullable": True},
        "Held": {"type": "boolean", "description": "under legal hold: never purged"},
        "HeldAt": {**when, "nullable": True}, "HeldBy": nullable, "HoldReason": nullable,
        "PurgedAt": {**when, "nullable": True, "description": "when the audio was deleted (retention)"},
        "PurgeReason": nullable,
    }
    return {
        "Outcome": {"type": "object", "additionalProperties": False, "properties": {
            "status": {"type": "string", "enum": ["STARTED", "ALREADY_RECORDING", "STOPPED", "PAUSED", "RESUMED"]},
            "recordingId": text, "uniqueId": text, "channel": text, "leg": {"type": "integer", "minimum": 1},
            "file": text, "deferred": {"type": "boolean", "description": "the leg waits in the local journal "
                                       "for the database (it is durable on disk)"},
        }, "required": ["status", "recordingId", "uniqueId", "channel", "leg", "file", "deferred"]},
        "Leg": {"type": "object", "additionalProperties": False, "properties": leg,
                "required": list(leg)},
        "HoldOutcome": {"type": "object", "additionalProperties": False, "properties": {
            "status": {"type": "string", "enum": ["HELD", "ALREADY_HELD", "RELEASED", "NOT_HELD"]}, **leg,
        }, "required": ["status", *leg]},
    }


def spec() -> dict:
    paths: dict[str, dict] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _describe(operation)
    return {
        "openapi": "3.0.3",
        "info": {"title": "recording-agi HTTP recording API", "version": __version__,
                 "description": "The vendor's recording API, served by recording-agi. Errors are one plain-text "
                                "sentence. Arguments may come in the query string or (for the POST operations) a "
                                "form body; the query string and the body are read as UTF-8."},
        "security": [{KEY: []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                KEY: {"type": "apiKey", "in": "query", "name": KEY,
                      "description": "the service's apiKey (recording-agi apikey generate); a form body may carry "
                                     "it instead. For retrieval, play and holds it says who asks only with loginName "
                                     "and where RECORDING_TRUST_CRM_LOGIN_NAME trusts the CRM"},
                TOKEN: {"type": "http", "scheme": "bearer",
                        "description": "a user's own token (recording-agi users token LOGIN): it names the user, "
                                       "so no apiKey or loginName is needed"},
            },
            "schemas": _schemas(),
        },
    }
