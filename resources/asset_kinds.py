"""The asset types a media generator may return, with WhatsApp's formats and size limits.

One list for the media sandbox (which checks every returned file against it) and the
approval checks (which check a template's parameters and a campaign's message type
against the types its generator returns).
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class AssetKind:
    extensions: dict[str, str]  # extension → content type
    max_bytes: int
    magic: tuple[bytes, ...] = ()


# WhatsApp Cloud API media types and size limits; data files travel with the member's
# record and are capped like documents.
ASSET_KINDS: dict[str, AssetKind] = {
    "image": AssetKind(
        {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"},
        5 * MB,
        (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"),
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
