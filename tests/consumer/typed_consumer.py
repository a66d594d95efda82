"""A consumer typed by models generated from the published schema (see check_types.py)."""

from webhook_event import ExportCompleted, WebhookEvent


def handle(body: bytes) -> list[str]:
    """What a consumer reads from a body: each file's place and version, or the error code."""
    event = WebhookEvent.model_validate_json(body).root
    if isinstance(event, ExportCompleted):
        manifest = f"{event.data.manifest.bucket}/{event.data.manifest.key}"
        return [manifest] + [f"{f.bucket}/{f.key}@{f.version_id}" for f in event.data.files]
    return [event.data.error.code]
