"""Errors the client service raises to the interfaces that drive it.

Every error a person can cause or meet derives from :class:`ClientError` (a
:class:`~kith.errors.KithError`) and carries one line a person understands: an interface shows
``str(error)`` and nothing else. Errors from the layers below that already read well to a
person pass through unchanged: :class:`~kith.vault.WrongPassphrase`,
:class:`~kith.client.relay.RelayUnreachable`, :class:`~kith.client.relay.RelayRefused`,
:class:`~kith.protocol.safety.KeyChangedError`.

Messages never contain message text, queue ids or relay addresses (they may end up in a
terminal's scrollback or a crash report); a contact's name appears only where the person just
typed it.
"""

from __future__ import annotations

from kith.errors import KithError


class ClientError(KithError):
    """Base of the client service's own errors."""


class ProfileLocked(ClientError):
    """The service was locked; its keys are gone. Unlock the profile again."""

    def __init__(self) -> None:
        super().__init__("the profile is locked")


class ProfileCorrupt(ClientError):
    """The profile's files opened with the passphrase but their contents are damaged."""

    def __init__(self, detail: str = "the profile is damaged and cannot be opened") -> None:
        super().__init__(detail)


class InvalidRelayAddress(ClientError, ValueError):
    """A relay address is not a ws:// or wss:// URL kith can use."""

    def __init__(self) -> None:
        super().__init__("relay address is not valid (expected ws://host:port or wss://...)")


class NoSuchContact(ClientError, LookupError):
    """No contact has that name (or local id)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no contact named {name!r}")


class ContactNameTaken(ClientError):
    """Another contact already has that name; names are unique within a profile."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a contact is already named {name!r}")


class InvalidContactName(ClientError, ValueError):
    """A contact name is empty, too long, or contains control characters."""


class InvalidInvitation(ClientError):
    """The text is not a kith invitation, or its signature does not check out."""

    def __init__(self) -> None:
        super().__init__("invitation link is not valid")


class ExpiredInvitation(ClientError):
    """The invitation's lifetime is over; ask for a new one."""

    def __init__(self) -> None:
        super().__init__("invitation expired")


class UsedInvitation(ClientError):
    """Someone already accepted this invitation (invitations work once)."""

    def __init__(self) -> None:
        super().__init__("invitation already used")


class OwnInvitation(ClientError):
    """The invitation was made by this profile."""

    def __init__(self) -> None:
        super().__init__("this invitation was made by this profile; give it to someone else")


class ContactUnavailable(ClientError):
    """Nothing can be sent to this contact (its invitation was refused, or it was forgotten)."""


class MessageTooLong(ClientError, ValueError):
    """The text does not fit in one message."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"message too long: at most {limit} bytes of UTF-8")
        self.limit = limit


class SafetyNumberMismatch(ClientError):
    """The digits typed or the code scanned do not match: the contact stays unverified."""

    def __init__(self) -> None:
        super().__init__(
            "safety numbers do not match: do not trust this contact until they do"
        )


class InvalidSetting(ClientError, ValueError):
    """A setting is out of its allowed range."""


class NotSupported(ClientError):
    """The operation needs something this build does not have yet."""


class MoveInProgress(ClientError):
    """A contact's inbox is already moving; one move at a time."""

    def __init__(self) -> None:
        super().__init__(
            "this contact is still moving to another relay: try again once that has finished"
        )
