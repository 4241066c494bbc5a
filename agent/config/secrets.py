"""Files a configuration names, resolved once when it is loaded.

A secret file (API keys, passwords, camera credentials) is read while the configuration is
validated, into a :class:`SecretFile` that keeps its value in memory only: a missing or
unreadable file is a configuration error with its key path (``auth.api_keys_file: ...``),
reported with every other error before the agent starts, and nothing reads the file later.
Other files (the MQTT TLS CA, certificate and key, which ``ssl`` reads itself) must at
least be readable at load (:data:`ReadableFile`).

A secret's value never appears in ``repr``, ``str``, dumps or error messages: only its
path does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, GetCoreSchemaHandler, SecretStr
from pydantic_core import core_schema

# A secret is a line or a few (keys, a password, user:password); a bigger file is the wrong
# file, and reading it whole would put who-knows-what in memory.
MAX_SECRET_FILE_BYTES = 64 * 1024


def _unreadable(path: Path, exc: OSError) -> ValueError:
    return ValueError(f"file {str(path)!r} cannot be read: {exc.strerror or exc}")


class SecretFile:
    """A secret read from a file when the configuration was loaded.

    ``path`` is shown (in dumps, as the key's value); the value only through
    :meth:`get_secret_value`. An empty file means "not set" (None), never an empty password.
    """

    __slots__ = ("_path", "_value")
    max_bytes = MAX_SECRET_FILE_BYTES

    def __init__(self, path: Path, value: str | None) -> None:
        self._path = path
        self._value = value

    @property
    def path(self) -> Path:
        """The file the secret was read from."""
        return self._path

    def get_secret_value(self) -> str | None:
        """The file's content without surrounding whitespace; None for an empty file."""
        return self._value

    @classmethod
    def read(cls, path: Path) -> Self:
        """Read ``path`` now; ValueError (a validation error of its key) when it cannot be."""
        try:
            with path.open("rb") as handle:
                raw = handle.read(cls.max_bytes + 1)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        if len(raw) > cls.max_bytes:
            raise ValueError(
                f"file {str(path)!r} is larger than {cls.max_bytes} bytes: not the right file?"
            )
        try:
            text = raw.decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise ValueError(f"file {str(path)!r} is not UTF-8 text") from None
        cls.check(path, text)
        return cls(path, text)

    @classmethod
    def check(cls, path: Path, value: str | None) -> None:
        """Subclasses refuse content they cannot use (ValueError naming ``path``)."""

    def __repr__(self) -> str:
        return f"SecretFile({str(self._path)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretFile):
            return NotImplemented
        return (self._path, self._value) == (other._path, other._value)

    def __hash__(self) -> int:
        return hash(self._path)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validated from a path (read at once), or passed through when already read;
        dumped as its path."""

        def validate(value: Any, to_path: core_schema.ValidatorFunctionWrapHandler) -> Any:
            if isinstance(value, cls):
                return value
            return cls.read(to_path(value))

        return core_schema.no_info_wrap_validator_function(
            validate,
            handler.generate_schema(Path),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda secret: str(secret.path), return_schema=core_schema.str_schema()
            ),
        )


def _readable(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist (or is not a file)")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file {str(path)!r} cannot be read (permissions)")
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable)]
"""A path that must name a readable file when the configuration is loaded."""


def secret_value(value: SecretStr | None, file: SecretFile | None) -> str | None:
    """A secret from its direct value (the environment) or, failing that, its file; both
    were resolved at load, so this never touches the disk."""
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    return file.get_secret_value() if file is not None else None
