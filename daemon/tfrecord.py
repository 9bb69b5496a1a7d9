"""Moved to :mod:`pipeline.audioset` (the one reader of the AudioSet tfrecord format).

Kept so that older imports (``from daemon.tfrecord import iter_clips``) go on
working; new code imports :mod:`pipeline.audioset`.
"""

from pipeline.audioset import (  # noqa: F401  (re-exported)
    Clip,
    RecordError,
    crc32c,
    iter_clips,
    iter_records,
    list_tfrecords,
    masked_crc32c,
    parse_clip,
)
