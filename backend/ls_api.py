"""Label Studio's REST API through label-studio-sdk: one way to make a client, read a project and
tell an unreachable or refusing Label Studio (the user's to fix) from a bug."""
from __future__ import annotations

from g4seg_core.errors import UserError, one_line


def ls_client(url: str, api_key: str, timeout: float = 120):
    from label_studio_sdk import LabelStudio

    # Our callers space their own retries (the uploader, the job queue); the client's would stack on top.
    return LabelStudio(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)


def is_connection_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


def is_label_studio_error(exc: BaseException) -> bool:
    """Label Studio answered with an error status, or could not be reached."""
    return getattr(exc, "status_code", None) is not None or is_connection_error(exc)


def read_project(client, project_id: int):
    try:
        return client.projects.get(project_id)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            raise UserError(f"Label Studio refused the API key ({status})") from None
        if status == 404:
            raise UserError(f"project {project_id} not found") from None
        if is_label_studio_error(exc):
            raise UserError(f"cannot read project {project_id}: {one_line(exc)}") from None
        raise
