"""Who may post a result: the listener's allow-list (docs/security.md, "Trusted senders").

Every receiver profile says which sending application/facility (MSH-3/MSH-4) its messages
carry and, for senders without a verified client certificate, from which addresses they may
come (``inbound.senders`` and ``inbound.peers`` in ``mappings/receivers/*.yaml``). A message is
heard only when some profile trusts both its sender pair and its connection; a result or
order response is then accepted only when the order it names went to one of those profiles.

Host names in ``peers`` are resolved once, when the policy is built (at ``rtplan serve``
start-up); a name that does not resolve is logged and trusts nobody.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from adapter.hl7.listener import Peer
from adapter.hl7.profiles import ReceiverProfile

__all__ = ["TrustPolicy", "Verdict"]

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Verdict:
    """The profiles that trust a message, or why none does (no message content)."""

    receivers: frozenset[str]
    reason: str = ""

    @property
    def trusted(self) -> bool:
        return bool(self.receivers)


def _networks(entries: Iterable[str]) -> tuple[Network, ...]:
    found: list[Network] = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None, type=socket.SOCK_STREAM)
        except OSError:
            log.warning("inbound peer %r does not resolve; it trusts no address", entry)
            continue
        for info in infos:
            found.append(ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]))
    return tuple(found)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustPolicy:
    """The allow-list of every receiver profile (see the module docstring)."""

    def __init__(self, profiles: Iterable[ReceiverProfile], extra_peers: dict[str, str]) -> None:
        """``extra_peers``: profile name -> a host that also counts as that receiver's address
        (``hl7.host`` when it overrides the profile's connection host)."""
        self._senders: dict[str, frozenset[tuple[str, str]]] = {}
        self._peers: dict[str, tuple[Network, ...]] = {}
        for profile in profiles:
            self._senders[profile.name] = frozenset(
                (s.application, s.facility) for s in profile.inbound.senders
            )
            extra = [extra_peers[profile.name]] if profile.name in extra_peers else []
            self._peers[profile.name] = _networks([*profile.inbound.peers, *extra])

    def may_connect(self, peer: Peer) -> bool:
        """Whether a connection is worth keeping at all: a verified client certificate, or an
        address some profile allows. Others are closed before they can hold any resource."""
        if peer.client_certificate:
            return True
        address = _address(peer.host)
        return address is not None and any(
            address in net for nets in self._peers.values() for net in nets
        )

    def check(self, application: str, facility: str, peer: Peer | None) -> Verdict:
        """Which profiles trust a message from ``application^facility`` over ``peer``."""
        by_sender = {
            name
            for name, senders in self._senders.items()
            if (application, facility) in senders or (application, "") in senders
        }
        if not application or not by_sender:
            return Verdict(frozenset(), "sender not allowed")
        if peer is None or peer.client_certificate:
            return Verdict(frozenset(by_sender))
        address = _address(peer.host)
        by_peer = {
            name
            for name in by_sender
            if address is not None and any(address in net for net in self._peers[name])
        }
        if not by_peer:
            return Verdict(frozenset(), "peer address not allowed for this sender")
        return Verdict(frozenset(by_peer))
