"""Following calls through transfers, queues, Redirect and Local channel optimisation: a model
of each call (its channels, bridges, anchor and current part) that AMI events update as plain
data, and the transitions it yields. It imports only the domain: no socket, no database, no
acting (docs/transfers.md)."""

from .anchor import AmbiguousAnchor, NoAnchor, find_anchor
from .model import Bridge, Call, Channel, Model, Part
from .rebuild import rebuild
from .tracker import CallTracker
from .transitions import CAUSES, CallEnded, PartBegan, PartEnded, PeerChanged, Transition

__all__ = [
    "AmbiguousAnchor", "Bridge", "CAUSES", "Call", "CallEnded", "CallTracker", "Channel", "Model",
    "NoAnchor", "Part", "PartBegan", "PartEnded", "PeerChanged", "Transition", "find_anchor", "rebuild",
]
