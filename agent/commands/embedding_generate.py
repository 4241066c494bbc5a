"""``embedding/generate``: an enrollment embedding from a base64 photo."""

from __future__ import annotations

import base64

from agent.config import EnrollmentConfig
from agent.errors import AgentError, ErrorCode
from agent.protocol import Command, EmbeddingGenerate, Reply
from agent.vision.embedding import generate_embedding
from agent.vision.inference import InferencePool, ModelSlot


def decode_photo_field(photo: str | None) -> bytes | None:
    """Bytes of a base64 ``photo`` field; invalid base64 is an INVALID_FILE_FORMAT error."""
    if photo is None or photo == "":
        return None
    try:
        return base64.b64decode("".join(photo.split()), validate=True)
    except (ValueError, TypeError) as exc:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT, "photo is not valid base64; encode the image bytes."
        ) from exc


class EmbeddingGenerateHandler:
    """Runs enrollment on the model in service, in the inference pool."""

    def __init__(self, models: ModelSlot, pool: InferencePool, cfg: EnrollmentConfig) -> None:
        self._models = models
        self._pool = pool
        self._cfg = cfg

    async def __call__(self, command: Command) -> Reply:
        """Embed the photo's one face; the reply carries the embedding and its quality."""
        assert isinstance(command, EmbeddingGenerate)
        photo = decode_photo_field(command.photo)
        if photo is None:
            raise AgentError(
                ErrorCode.PHOTO_FILE_REQUIRED,
                "photo is required: send the image base64-encoded.",
            )
        engine = self._models.require()
        result = await self._pool.call(
            generate_embedding,
            engine,
            self._cfg,
            photo=photo,
            submission_id=command.submission_id,
        )
        return Reply.ok("Embedding generated.", result.as_data())
