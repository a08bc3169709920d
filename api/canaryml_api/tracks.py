"""The tracks of a ModelDeployment and how each one is reached.

Per track the operator runs a Deployment of `canaryml serve` and a Service named NAME-TRACK in
the resource's namespace; the router (builtin) and the HTTPRoute (gateway-api) send to those
Services, on SERVICE_PORT.
"""

from __future__ import annotations

from typing import Final, Literal

Track = Literal["stable", "canary", "shadow"]
LiveTrack = Literal["stable", "canary"]  # the tracks whose answers clients get
TRACKS: Final[tuple[Track, ...]] = ("stable", "canary", "shadow")

SERVICE_PORT: Final = 80  # every Service the operator creates
SERVER_PORT: Final = 8080  # the model server's container port (`canaryml serve`)
ROUTER_PORT: Final = 8080  # the builtin router's container port (`canaryml router`)


def service_name(owner: str, track: Track) -> str:
    """The Service (and Deployment) of one track of the ModelDeployment `owner`."""
    return f"{owner}-{track}"


def service_url(owner: str, track: Track) -> str:
    """The track's Service as a URL, resolved in the caller's own namespace (port 80)."""
    return f"http://{service_name(owner, track)}"
