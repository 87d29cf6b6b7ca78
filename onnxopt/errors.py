"""One exception hierarchy for onnxopt.

Every error a user can cause is an :class:`OnnxOptError` with a one-line message, an optional
hint and the CLI exit code it maps to. Each subclass also subclasses the builtin it resembles, so
callers that already catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class OnnxOptError(Exception):
    """Base of all onnxopt errors; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(OnnxOptError, ValueError):
    """A bad option, pass spec, recipe, profile or command-line usage."""

    exit_code = 2


class OutputExistsError(ConfigError, FileExistsError):
    """Writing would overwrite the input model (or another file the user must confirm)."""


class ModelError(OnnxOptError, ValueError):
    """The input model cannot be used."""

    exit_code = 3


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model file (or one of its external-data files) does not exist."""


class NotOnnxError(ModelError):
    """The bytes are not an ONNX model (corrupt, truncated or another format)."""


class InvalidModelError(ModelError):
    """The model parses but is not a valid graph (checker failure, no nodes, no outputs)."""


class UnsafeModelError(ModelError, PermissionError):
    """The model asks for something we refuse to do (external data outside its folder)."""


class ModelTooLargeError(ModelError, MemoryError):
    """Loading the model would not fit in the memory available."""


class UnsupportedOperatorError(ModelError):
    """The model uses operator domains that onnxruntime cannot run."""


class DataError(OnnxOptError, ValueError):
    """Calibration or evaluation data that does not fit the model."""

    exit_code = 3


class PassError(OnnxOptError, RuntimeError):
    """A pass failed on this model; nothing is written."""

    exit_code = 4

    def __init__(self, message: str, hint: str | None = None, *, pass_name: str = "", completed: tuple[str, ...] = ()):
        super().__init__(message, hint)
        self.pass_name = pass_name
        self.completed = completed


class MeasurementError(OnnxOptError, RuntimeError):
    """A latency or fidelity measurement could not be made."""

    exit_code = 5


class ProviderUnavailableError(MeasurementError):
    """The profile's execution provider is not in this onnxruntime build (and fallback is not allowed)."""
