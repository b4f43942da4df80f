"""A relay that drops the inviter's handshake confirmation, and then the confirmation sent
again in answer to the acceptor's request: the acceptor must still end ACTIVE with its inbox
secured (a contact left PENDING keeps an inbox anyone holding its sender id can write to, and
cannot move it)."""

from __future__ import annotations

import pytest

from kith.client.model import ContactState
from kith.client.relay import RelayClient, RelayError
from kith.client.service import ClientService
from kith.client.store import QueueKind
from kith.crypto.signing import SigningKey

from .conftest import MakeProfile, Relay


async def _drop_next(relay: Relay, acceptor: ClientService) -> None:
    """The hostile relay: take the one block waiting on the acceptor's inbox behind its back."""
    (queue,) = [q for q in acceptor._queues.values() if q.kind is QueueKind.CONTACT]
    async with await RelayClient.connect(relay.url) as raw:
        await raw.subscribe(queue.recipient_id, SigningKey(queue.auth_seed))
        taken = await raw.next_message(timeout=5)
        await raw.ack(queue.recipient_id, taken.msg_id)


@pytest.mark.parametrize("losses", [2, 3])
async def test_a_confirmation_lost_twice_still_confirms_the_acceptor(
    make_profile: MakeProfile, relay: Relay, losses: int
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    invitation = await alice.create_invitation()
    await bob.accept_invitation(invitation.uri, "alice")
    await alice.sync(5)  # the acceptance; alice sends the confirmation
    (contact,) = await alice.contacts()
    for i in range(losses):
        await _drop_next(relay, bob)  # the confirmation (the first, then each one sent again)
        await alice.send(contact, f"hello {i}")
        await alice.sync(5)
        await bob.sync(5)  # the text shows the gap; once quiet, bob asks for the number
        assert (await bob.contact("alice")).state is ContactState.PENDING
        assert bob.stats["resend_requests"] == i + 1
        await alice.sync(5)  # alice recognises a confirmation's number and confirms again
        assert alice.stats.get("resend_unavailable", 0) == 0
        assert alice.stats["resent"] == i + 1
    await bob.sync(5)
    assert (await bob.contact("alice")).state is ContactState.ACTIVE
    (queue,) = [q for q in bob._queues.values() if q.kind is QueueKind.CONTACT]
    assert queue.secured and queue.secure_key is not None
    # Secured at the relay: a sender without alice's key is refused there.
    channel = await bob._channel(queue.owner)
    async with await RelayClient.connect(relay.url) as raw:
        with pytest.raises(RelayError):
            await raw.send(channel.inbox.sender_id, bytes(raw.block_size))
    texts = [m.text for m in await bob.messages("alice")]
    assert sorted(texts) == [f"hello {i}" for i in range(losses)]
