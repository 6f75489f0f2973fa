"""The `coralbay interact` protocol's names, shared by the engine and its clients (the Slicer module).

Why one file for both sides (as nnInteractive shares one protocol file between client and server):
a request or event name spelled differently on one side fails silently; here it is one enum member,
and each event is decoded once, into an `Event` that also says what the status line shows.
Standard library only: the Slicer module imports it before PyTorch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from coralbay.vocabulary import StrEnum


class Request(StrEnum):
    """A request's "type"."""

    OPEN = "open"            # image: the scan to open
    START = "start"          # name, value, propose: begin a structure (with its automatic proposal)
    POINT = "point"          # lps, positive
    SCRIBBLE = "scribble"    # path, positive_value, negative_value
    BOX = "box"              # lower, upper (LPS corners)
    SEGMENT = "segment"      # path, value: an existing segment to refine
    PROPOSE = "propose"      # name: the automatic proposal again
    UNDO = "undo"
    REDO = "redo"
    ACCEPT = "accept"
    LABELS = "labels"        # path: the accepted structures as one label map
    STATUS = "status"
    CANCEL = "cancel"        # stops what is running or waiting
    QUIT = "quit"
    READY = "ready"          # not a request: the engine's first event says it is ready


PROMPTS = (Request.POINT, Request.SCRIBBLE, Request.BOX, Request.SEGMENT)  # undone and replayed one by one
# Requests whose result carries how far the scan's features are.
REPORTS_FEATURES = PROMPTS + (Request.START, Request.PROPOSE, Request.STATUS)


class EventKind(StrEnum):
    """An event's "event" (the stdlib progress protocol of `coralbay.progress`)."""

    PROGRESS = "progress"
    LOG = "log"
    RESULT = "result"
    ERROR = "error"


class Stage(StrEnum):
    """A progress event's "stage"."""

    FEATURES = "features"    # the scan's encoder windows
    EXAMPLES = "examples"    # accepted examples restored from disk


class ProposedBy(StrEnum):
    """Where an automatic proposal came from (a result's "proposed_by"; any other value is a model name)."""

    EXAMPLES = "examples"


@dataclass(frozen=True)
class Event:
    """One event of the session, decoded once (`decode`)."""

    kind: str                       # an EventKind (unknown kinds are kept as they came)
    request: Optional[str] = None   # the request's type it answers
    id: Optional[str] = None        # the request's id
    name: Optional[str] = None      # the structure
    mask: Optional[str] = None      # the answer's mask file
    message: str = ""
    fraction: Optional[float] = None
    level: str = "info"
    proposed_by: Optional[str] = None
    fields: Mapping[str, Any] = field(default_factory=dict)   # the event as it came

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> "Event":
        fraction = event.get("fraction")
        return cls(kind=str(event.get("event", "")), request=_text(event.get("request")), id=_text(event.get("id")),
                   name=_text(event.get("name")), mask=_text(event.get("mask")),
                   message=str(event.get("message") or ""),
                   fraction=None if fraction is None else float(fraction), level=str(event.get("level") or "info"),
                   proposed_by=_text(event.get("proposed_by")), fields=dict(event))

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def is_result(self) -> bool:
        return self.kind == EventKind.RESULT

    @property
    def is_answer(self) -> bool:
        """A result with a mask: the structure's current answer (a click's, a proposal, undo...)."""
        return self.is_result and bool(self.mask)

    @property
    def finishes_request(self) -> bool:
        return self.kind in (EventKind.RESULT, EventKind.ERROR) and self.id is not None

    def proposal_sentence(self) -> str:
        """The status line for an answer that is an automatic proposal ("" for any other answer)."""
        if not self.proposed_by or not self.mask:
            return ""
        source = ("from your accepted examples" if self.proposed_by == ProposedBy.EXAMPLES
                  else f"by model {self.proposed_by}")
        lead = "back to the proposal" if self.request == Request.UNDO else "proposed"
        return (f"{self.name}: {lead} {source} ({self.get('volume_ml')} ml); "
                "correct it with points or strokes, or Accept.")

    def status(self) -> str:
        """What the status line says after this event ("" when it says nothing new)."""
        if self.kind in (EventKind.ERROR, EventKind.PROGRESS) or (self.kind == EventKind.LOG and self.get("restarted")):
            return self.message
        if not self.is_result:
            return ""
        if self.is_answer:
            return self.proposal_sentence() or (
                f"{self.name}: {self.get('volume_ml')} ml (answer {self.get('answer')}).")
        if self.request == Request.START:
            return f"{self.name}: no proposal; place points."
        if self.request == Request.ACCEPT:
            return f"Accepted {self.name}."
        if self.request == Request.OPEN:
            return "Ready: name a structure and place points."
        if self.request == Request.CANCEL:
            return "Cancelled."
        return ""


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)
