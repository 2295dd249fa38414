"""One exception family, so the CLI can turn any expected failure into a one-line message."""


class CvretError(Exception):
    """Base of every error cvret reports to a user (the message names the file and the problem)."""


class DatasetError(CvretError):
    """A dataset folder, pattern or dataset.json that cannot be read."""


class ImageError(CvretError):
    """One image that cannot be decoded or is unusable (empty, truncated, too large...)."""


class BlankSketch(ImageError):
    """A sketch with no ink once framed (`framing.frame`): nothing to search for."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (the decompression-bomb guard), refused before decoding."""


class EncoderError(CvretError):
    """A model or weights that cannot be resolved, or an encoder that does not match an index."""


class StoreError(CvretError):
    """A feature store (meta.h5) that is missing, corrupted or incompatible."""


class MeshError(CvretError):
    """A mesh that cannot be loaded or rendered (unreadable, empty, non-finite vertices)."""


class StudyError(CvretError):
    """A study that cannot be computed on the given index (missing domains, too few shapes...)."""


class ConfigError(CvretError, ValueError):
    """An option value that cannot work (unknown style, negative size, unknown device...).

    Also a ValueError, so callers that validated options with `except ValueError` keep working.
    """
