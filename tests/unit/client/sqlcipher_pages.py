"""Read a closed SQLCipher file page by page, as a forensic examiner holding the key would.

Why: SQLCipher encrypts every page, so searching the raw file for a deleted message proves
nothing (the text was never there in the clear). What matters is whether someone who forces
the passphrase out of a person can recover a disappeared message from the file: from a free
page, a page's unused space, or a stale cell. So these helpers decrypt *every* page of the file
(allocated or not) with the database key and hand back the plaintext pages to search.

SQLCipher 4 defaults, as the vault opens its databases (raw key, so no PBKDF2): 4096-byte
pages; the first 16 bytes of the file are the salt; each page ends with an 80-byte reserved
area, a 16-byte IV followed by a 64-byte HMAC-SHA512; the rest of the page (after the salt,
on page 1) is AES-256-CBC under the key. The HMAC is not checked here; the control test
(finding a message that is still there) shows the decryption is right.
"""

from __future__ import annotations

import pathlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kith.vault.keyfile import Grant
from kith.vault.vault import DB_NAMES, _db_key

PAGE = 4096
SALT = 16
RESERVE = 80
IV = 16


def db_key(grant: Grant) -> bytes:
    """The SQLCipher page key of the profile a grant opens (as the vault derives it)."""
    return _db_key(grant.data_key)


def db_path(vault_dir: pathlib.Path, grant: Grant) -> pathlib.Path:
    return vault_dir / DB_NAMES[grant.profile]


def decrypted_pages(path: pathlib.Path, key: bytes) -> list[bytes]:
    data = path.read_bytes()
    if len(data) % PAGE:
        raise ValueError("not a whole number of pages")
    pages = []
    for i in range(len(data) // PAGE):
        page = data[i * PAGE : (i + 1) * PAGE]
        start = SALT if i == 0 else 0
        body = page[start : PAGE - RESERVE]
        iv = page[PAGE - RESERVE : PAGE - RESERVE + IV]
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        pages.append(dec.update(body) + dec.finalize())
    return pages


def plaintext_contains(path: pathlib.Path, key: bytes, needle: bytes) -> bool:
    return any(needle in page for page in decrypted_pages(path, key))
