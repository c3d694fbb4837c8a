"""The asset types a media generator may return, with WhatsApp's formats and size limits.

One list for the media sandbox (which checks every returned file against it, by its
extension and by its content) and the approval checks (which check a template's parameters and a campaign's message type
against the types its generator returns).
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class AssetKind:
    extensions: dict[str, str]  # extension → content type
    max_bytes: int


# WhatsApp Cloud API media types and size limits; data files travel with the member's
# record and are capped like documents.
ASSET_KINDS: dict[str, AssetKind] = {
    "image": AssetKind(
        {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"},
        5 * MB,
    ),
    "video": AssetKind({".mp4": "video/mp4", ".3gp": "video/3gpp"}, 16 * MB),
    "audio": AssetKind(
        {
            ".aac": "audio/aac",
            ".amr": "audio/amr",
            ".mp3": "audio/mpeg",
            ".m4a": "audio/mp4",
            ".ogg": "audio/ogg",
        },
        16 * MB,
    ),
    "document": AssetKind(
        {
            ".pdf": "application/pdf",
            ".txt": "text/plain",
            ".doc": "application/msword",
            ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ".xls": "application/vnd.ms-excel",
            ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ".ppt": "application/vnd.ms-powerpoint",
            ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        },
        100 * MB,
    ),
    "json": AssetKind({".json": "application/json"}, 100 * MB),
    "text": AssetKind({".txt": "text/plain"}, 100 * MB),
    "csv": AssetKind({".csv": "text/csv"}, 100 * MB),
}


# How many leading bytes `content_matches` needs.
SNIFF_BYTES = 4096

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .doc, .xls, .ppt
_ZIP = b"PK\x03\x04"  # .docx, .xlsx, .pptx


def _iso_media(head: bytes) -> bool:
    return head[4:8] == b"ftyp"


def _text(head: bytes) -> bool:
    """UTF-8 without NUL bytes (the head may end inside a character)."""
    if b"\x00" in head:
        return False
    try:
        head.decode()
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3 and error.reason == "unexpected end of data"
    return True


def _json(head: bytes) -> bool:
    return _text(head) and head.lstrip()[:1] in (b"{", b"[")


# What a file of each content type starts with.
SIGNATURES = {
    "image/jpeg": lambda head: head.startswith(b"\xff\xd8\xff"),
    "image/png": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "video/mp4": _iso_media,
    "video/3gpp": _iso_media,
    "audio/mp4": _iso_media,
    "audio/aac": lambda head: head[:2] in (b"\xff\xf1", b"\xff\xf9") or head.startswith(b"ADIF"),
    "audio/amr": lambda head: head.startswith(b"#!AMR"),
    "audio/mpeg": lambda head: (
        head.startswith(b"ID3") or (head[:1] == b"\xff" and head[1:2] >= b"\xe0")
    ),
    "audio/ogg": lambda head: head.startswith(b"OggS"),
    "application/pdf": lambda head: head.startswith(b"%PDF-"),
    "application/msword": lambda head: head.startswith(_OLE),
    "application/vnd.ms-excel": lambda head: head.startswith(_OLE),
    "application/vnd.ms-powerpoint": lambda head: head.startswith(_OLE),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": lambda head: (
        head.startswith(_ZIP)
    ),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": lambda head: (
        head.startswith(_ZIP)
    ),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": lambda head: (
        head.startswith(_ZIP)
    ),
    "application/json": _json,
    "text/plain": _text,
    "text/csv": _text,
}


def content_matches(content_type: str, head: bytes) -> bool:
    """Whether a file's first `SNIFF_BYTES` bytes are what its content type says."""
    return bool(head) and SIGNATURES[content_type](head)
