"""kith: an end-to-end encrypted messenger for communities that a state hunts.

The package is layered (see docs/architecture.md):

- ``kith.crypto``   the only code that imports cryptographic libraries; offers recipes.
- ``kith.protocol`` sans-I/O wire formats and state machines; takes ``now`` and ``rng``.
- ``kith.relay``    the blind store-and-forward server: protocol core + adapter + storage.
- ``kith.vault``    the encrypted local store and its key slots.
- ``kith.client``   the async client service that every interface drives.
- ``kith.cli``      the ``kith`` command: builds services, calls them, shows results.
"""

__version__ = "0.1.0"
