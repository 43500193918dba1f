"""Wire models of /v1/uploads: an upload set (a checkpoint's files uploaded by tus) and its files."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UploadFileStatus(BaseModel):
    """One file of an upload set: the bytes received (``offset``) of its declared ``length``."""

    id: str
    name: str = Field(description="The file's name in the checkpoint directory (tus Upload-Metadata filename).")
    length: int
    offset: int
    complete: bool
    url: str = Field(description="The file's tus upload URL (HEAD, PATCH, DELETE).")


class UploadSetStatus(BaseModel):
    """An upload set: a checkpoint directory being uploaded; a job takes it as ``{"source": {"upload": id}}``."""

    id: str
    url: str
    tus_url: str = Field(description="The tus endpoint for this set's files (creation: POST with Upload-Length).")
    files: list[UploadFileStatus]
    complete: bool = Field(description="Every file received whole (and there is at least one).")
