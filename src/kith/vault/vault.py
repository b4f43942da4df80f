"""The vault: a directory holding one key file and the SQLCipher databases it unlocks.

Theory of operation (the full reasoning is in docs/protocol/vault.md)::

    <vault>/            mode 0700
        keys            1 + n*128 bytes, mode 0600: the key slots (kith.vault.keyfile)
        db0, db1        SQLCipher databases, mode 0600: one per profile

Creating a vault draws two random 32-byte *data keys*, one per profile, and seals a REAL grant
(both keys, the profile to open) into one slot at a random index; every other slot is random
bytes. Both databases are created with the same operations so they start out identical in
size; which of the two files is the real profile is random too. Stage 5 uses the second
profile as the decoy (docs/protocol/vault.md, "Roles"); today it is created and left untouched.

Unlocking runs Argon2id once per slot with the same parameters, tries every slot, and opens the
database of the profile the matching grant names. Each data key is split with HKDF into the
SQLCipher page key and the pickle key for vodozemac, so neither is ever stored.

Each database keeps the SHA-256 digest of the key file it was last paired with. A change to any
byte of the key file outside the slot that matched is therefore caught at unlock
(:class:`KeyFileModified`); a change inside it makes that slot fail to open
(:class:`WrongPassphrase`, since it is indistinguishable from a wrong passphrase).

Changing the passphrase rewrites the whole key file (own slot resealed with a new salt, random
slots redrawn) through a three-step protocol that tolerates a crash at any point: the database
first records the digest of the file about to be written as *pending*, then the file is
replaced atomically, then *pending* becomes *current*. At unlock either digest is accepted.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import unicodedata
from collections.abc import Callable
from types import TracebackType
from typing import Final

from kith.crypto.kdf import Argon2idParams, argon2id, hkdf_sha256, sha256
from kith.crypto.sqlstore import EncryptedDatabase, SqlStoreError, open_encrypted
from kith.errors import DecryptError
from kith.vault import fsio
from kith.vault.db import META_KEYFILE_DIGEST, META_KEYFILE_PENDING, VaultDB, migrate
from kith.vault.errors import (
    InvalidPassphrase,
    KeyFileModified,
    NotAVault,
    PassphraseInUse,
    UnsupportedParams,
    VaultClosed,
    VaultCorrupt,
    VaultError,
    VaultExists,
    WrongPassphrase,
)
from kith.vault.keyfile import (
    DEFAULT_SLOTS,
    KEY_LEN,
    MAX_SLOTS,
    MIN_SLOTS,
    PROFILES,
    Grant,
    KeyFile,
    Role,
    decode_keyfile,
    encode_keyfile,
    keyfile_size,
    make_header,
    random_slot,
    scan,
    seal_slot,
)
from kith.vault.params import INSECURE_LEVELS, level_of

KEYFILE_NAME: Final = "keys"
DB_NAMES: Final = ("db0", "db1")
MAX_PASSPHRASE_BYTES: Final = 1024

_DB_KEY_INFO: Final = b"kith vault v1: sqlcipher page key"
_PICKLE_KEY_INFO: Final = b"kith vault v1: vodozemac pickle key"

Rng = Callable[[int], bytes]
Kdf = Callable[[bytes, bytes, Argon2idParams], bytes]


def _passphrase_bytes(passphrase: str) -> bytes:
    """NFC-normalised UTF-8, so the same passphrase typed on two keyboards (composed or
    decomposed accents) derives the same key."""
    if not isinstance(passphrase, str):
        raise TypeError("passphrase must be str")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _candidate_bytes(passphrase: str) -> bytes:
    """A passphrase typed to open something. One too long for any slot is replaced by the
    empty passphrase (which no slot holds either), so it is tried with the same work and
    fails the same way as any other wrong passphrase."""
    data = _passphrase_bytes(passphrase)
    return data if len(data) <= MAX_PASSPHRASE_BYTES else b""


def _new_passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str):
        raise InvalidPassphrase("passphrase must be text")
    data = _passphrase_bytes(passphrase)
    if not data:
        raise InvalidPassphrase("passphrase must not be empty")
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise InvalidPassphrase(f"passphrase must be at most {MAX_PASSPHRASE_BYTES} bytes")
    return data


def _randbelow(n: int, rng: Rng) -> int:
    """Uniform integer in [0, n) by rejection sampling (n <= 256)."""
    limit = 256 - 256 % n
    while True:
        value = rng(1)[0]
        if value < limit:
            return value % n


def _db_key(data_key: bytes | bytearray) -> bytes:
    return hkdf_sha256(data_key, _DB_KEY_INFO)


def _open_profile(directory: pathlib.Path, grant: Grant) -> EncryptedDatabase:
    try:
        db = open_encrypted(
            directory / DB_NAMES[grant.profile], _db_key(grant.data_key), create=False
        )
    except DecryptError:
        raise VaultCorrupt("the key slot opened but its database does not") from None
    except SqlStoreError as exc:
        raise VaultCorrupt(f"the database cannot be opened: {exc}") from None
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _read_keyfile(directory: pathlib.Path) -> bytes:
    try:
        data = fsio.read_whole(directory / KEYFILE_NAME, keyfile_size(MAX_SLOTS))
    except (FileNotFoundError, NotADirectoryError):
        raise NotAVault("no vault key file at this path") from None
    except OSError as exc:
        raise VaultError(f"cannot read the key file: {exc.strerror}") from None
    return data


def _check_digest(db: VaultDB, data: bytes) -> bool:
    """Accept the key file if it is the current or the pending one; settle the pending state.

    Returns False if it is neither (the file was changed behind the vault's back).
    """
    digest = sha256(data)
    current = db.meta_get(META_KEYFILE_DIGEST)
    pending = db.meta_get(META_KEYFILE_PENDING)
    if current is not None and hmac.compare_digest(current, digest):
        if pending is not None:
            db.meta_put(META_KEYFILE_PENDING, None)  # a change that never reached the disk
        return True
    if pending is not None and hmac.compare_digest(pending, digest):
        with db.transaction():  # the change reached the disk; finish it
            db.meta_put(META_KEYFILE_DIGEST, digest)
            db.meta_put(META_KEYFILE_PENDING, None)
        return True
    return False


def _rebuild_keyfile(
    old: KeyFile, index: int, grant: Grant, passphrase: bytes, rng: Rng, kdf: Kdf
) -> bytes:
    """A fresh key file: own slot resealed, slots no one manages redrawn, managed ones kept.

    Redrawing the unused slots on every write means that two images of the disk taken before
    and after a change differ in every slot this holder controls, not only in its own.
    """
    slots: list[bytes] = []
    for i in range(old.n):
        if i == index:
            slots.append(
                seal_slot(grant, passphrase, level=old.level, index=i, n=old.n, rng=rng, kdf=kdf)
            )
        elif grant.managed >> i & 1:
            slots.append(old.slots[i])
        else:
            slots.append(random_slot(rng))
    return encode_keyfile(KeyFile(make_header(old.level, rng), tuple(slots)))


def _write_keyfile_with_digest(directory: pathlib.Path, db: VaultDB, data: bytes, rng: Rng) -> None:
    """Pending digest, atomic replace, current digest: crash-safe at every step."""
    db.meta_put(META_KEYFILE_PENDING, sha256(data))
    fsio.atomic_write(directory / KEYFILE_NAME, data, rng)
    with db.transaction():
        db.meta_put(META_KEYFILE_DIGEST, sha256(data))
        db.meta_put(META_KEYFILE_PENDING, None)


class UnlockedVault:
    """An open vault: the database of one profile and the keys derived for it.

    Returned by :meth:`Vault.create` and :meth:`Vault.unlock`. Use it as a context manager or
    call :meth:`close`; after closing, every method raises :class:`VaultClosed`.
    """

    __slots__ = ("_closed", "_db", "_grant", "_index", "_path", "_pickle_key")

    def __init__(self, path: pathlib.Path, index: int, grant: Grant, db: EncryptedDatabase) -> None:
        self._path = path
        self._index = index
        self._grant: Grant | None = grant
        self._db: VaultDB | None = VaultDB(db)
        self._pickle_key = bytearray(hkdf_sha256(grant.data_key, _PICKLE_KEY_INFO))
        self._closed = False

    def _live_db(self) -> VaultDB:
        if self._db is None:
            raise VaultClosed("the vault is closed")
        return self._db

    def _live_grant(self) -> Grant:
        if self._grant is None:
            raise VaultClosed("the vault is closed")
        return self._grant

    @property
    def path(self) -> pathlib.Path:
        return self._path

    @property
    def db(self) -> VaultDB:
        """The profile's typed store (key/value records and pickles)."""
        return self._live_db()

    @property
    def role(self) -> Role:
        """What the passphrase that opened this vault is for. Today always REAL; the client
        service acts on it in stage 5 and must never display it."""
        return self._live_grant().role

    @property
    def pickle_key(self) -> bytes:
        """32-byte key for vodozemac pickles; derived from the data key, never stored."""
        self._live_grant()
        return bytes(self._pickle_key)

    def change_passphrase(
        self, old: str, new: str, *, rng: Rng = os.urandom, kdf: Kdf = argon2id
    ) -> None:
        """Re-wrap this profile's keys under ``new``. ``old`` must open this same slot.

        Costs two full unlocks plus one derivation (old checked, new checked against every
        other slot, new sealed), whatever the vault holds. The data key does not change: see
        docs/protocol/vault.md ("Known limits") for what that means after a passphrase leak.
        """
        db = self._live_db()
        grant = self._live_grant()
        new_bytes = _new_passphrase_bytes(new)
        old_bytes = _candidate_bytes(old)
        data = _read_keyfile(self._path)
        keyfile = decode_keyfile(data)
        if not _check_digest(db, data):
            raise KeyFileModified("the key file was changed outside this vault")
        found = scan(keyfile, old_bytes, kdf)
        if found is None or found[0] != self._index or found[1] != grant:
            raise WrongPassphrase
        clash = scan(keyfile, new_bytes, kdf)
        if clash is not None and clash[0] != self._index:
            raise PassphraseInUse("that passphrase already opens another slot")
        new_data = _rebuild_keyfile(keyfile, self._index, grant, new_bytes, rng, kdf)
        _write_keyfile_with_digest(self._path, db, new_data, rng)

    def close(self) -> None:
        """Close the database and overwrite the key material this object holds.

        Python cannot promise more than that: ``bytes`` objects (the data keys inside the
        grant, intermediate copies made by libraries) are immutable and are freed, not wiped,
        when the garbage collector gets to them. SQLCipher wipes its own copies
        (cipher_memory_security). See docs/protocol/vault.md, "What close() can and cannot
        erase".
        """
        if self._closed:
            return
        self._closed = True
        for i in range(len(self._pickle_key)):
            self._pickle_key[i] = 0
        self._grant = None
        db, self._db = self._db, None
        if db is not None:
            db.raw.close()

    def __enter__(self) -> UnlockedVault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"UnlockedVault({'closed' if self._closed else 'open'})"


class Vault:
    """Create and unlock vaults. All state lives on disk; this class has no instances."""

    def __init__(self) -> None:
        raise TypeError("use Vault.create() or Vault.unlock()")

    @staticmethod
    def create(
        path: str | os.PathLike[str],
        passphrase: str,
        params: Argon2idParams,
        rng: Rng = os.urandom,
        *,
        slots: int = DEFAULT_SLOTS,
        allow_insecure_params_for_tests: bool = False,
        kdf: Kdf = argon2id,
    ) -> UnlockedVault:
        """Create a new vault at ``path`` (which must not exist) and return it unlocked.

        ``params`` must be an entry of :data:`kith.vault.params.COST_TABLE`, normally the
        result of :func:`kith.vault.params.calibrate`. The vault appears at ``path`` only when
        complete: it is assembled in a private sibling directory and renamed into place.
        """
        secret = _new_passphrase_bytes(passphrase)
        level = level_of(params)
        if level in INSECURE_LEVELS and not allow_insecure_params_for_tests:
            raise UnsupportedParams("these Argon2id parameters are for tests only")
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in [{MIN_SLOTS}, {MAX_SLOTS}]")
        target = pathlib.Path(path)
        if target.exists() or target.is_symlink():
            raise VaultExists("something already exists at this path")
        if not target.parent.is_dir():
            raise VaultError("the parent directory does not exist")

        data_keys = tuple(rng(KEY_LEN) for _ in range(PROFILES))
        if any(len(k) != KEY_LEN for k in data_keys):
            raise ValueError("rng returned the wrong number of bytes")
        profile = _randbelow(PROFILES, rng)
        index = _randbelow(slots, rng)
        grant = Grant(Role.REAL, profile, data_keys, managed=1 << index)
        header = make_header(level, rng)
        sealed = [
            seal_slot(grant, secret, level=level, index=i, n=slots, rng=rng, kdf=kdf)
            if i == index
            else random_slot(rng)
            for i in range(slots)
        ]
        keyfile = encode_keyfile(KeyFile(header, tuple(sealed)))
        digest = sha256(keyfile)

        staging = target.with_name(f".{target.name}.creating-{rng(8).hex()}")
        fsio.make_private_dir(staging)
        try:
            for p in range(PROFILES):
                # Identical operations on both databases, so they start identical in size.
                db = open_encrypted(staging / DB_NAMES[p], _db_key(data_keys[p]), create=True)
                try:
                    migrate(db)
                    VaultDB(db).meta_put(META_KEYFILE_DIGEST, digest)
                finally:
                    db.close()
            fsio.atomic_write(staging / KEYFILE_NAME, keyfile, rng)
            fsio.fsync_dir(staging)
            if target.exists() or target.is_symlink():
                raise VaultExists("something already exists at this path")
            os.rename(staging, target)
        except BaseException:
            _remove_staging(staging)
            raise
        fsio.fsync_dir(target.parent)
        return UnlockedVault(target, index, grant, _open_profile(target, grant))

    @staticmethod
    def unlock(
        path: str | os.PathLike[str],
        passphrase: str,
        *,
        rng: Rng = os.urandom,
        accept_modified_keyfile: bool = False,
        kdf: Kdf = argon2id,
    ) -> UnlockedVault:
        """Open the vault at ``path`` with ``passphrase``.

        Raises :class:`WrongPassphrase` (and nothing more specific) when no slot opens.
        Raises :class:`KeyFileModified` when the passphrase is right but some other byte of
        the key file was changed; with ``accept_modified_keyfile=True`` the vault instead
        rewrites the key file (own slot resealed, every slot it does not manage redrawn) and
        opens. Leftovers of an interrupted key-file write are scrubbed first.
        """
        secret = _candidate_bytes(passphrase)
        directory = pathlib.Path(path)
        data = _read_keyfile(directory)
        keyfile = decode_keyfile(data)
        fsio.scrub_stale_temps(directory, rng)
        found = scan(keyfile, secret, kdf)
        if found is None:
            raise WrongPassphrase
        index, grant = found
        if grant.role is Role.PANIC:
            # Reserved for stage 5, which destroys the keys before answering like this.
            raise WrongPassphrase
        raw = _open_profile(directory, grant)
        try:
            db = VaultDB(raw)
            if not _check_digest(db, data):
                if not accept_modified_keyfile:
                    raise KeyFileModified("the key file was changed outside this vault")
                repaired = _rebuild_keyfile(keyfile, index, grant, secret, rng, kdf)
                _write_keyfile_with_digest(directory, db, repaired, rng)
        except BaseException:
            raw.close()
            raise
        return UnlockedVault(directory, index, grant, raw)


def _remove_staging(staging: pathlib.Path) -> None:
    """Remove a half-built vault directory (only the files this module creates in it)."""
    if not staging.is_dir():
        return
    for entry in os.scandir(staging):
        name = entry.name
        if (
            name in (KEYFILE_NAME, *DB_NAMES)
            or fsio.is_temp_name(name)
            or name.endswith("-journal")
        ):
            os.unlink(entry.path)
    os.rmdir(staging)
