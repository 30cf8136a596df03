"""Bounds on the lists a client sends inside a request, checked from their length before use.

Why: protobuf hands the server a repeated field of any length that fits the message size; copying,
checking and echoing a class filter of 10^6 entries cost the event loop and wrote a 7.9 MB log
line. A list longer than its bound is refused from its length alone.
"""

from __future__ import annotations

from service.errors import InvalidArgument

MAX_CLASS_FILTER = 4096  # more classes than any detector here has; a longer filter is not a filter


def check_class_filter_length(length: int, num_classes: int = 0) -> None:
    """A class filter may name each class at most once: refuse a longer one before it is copied."""
    limit = min(MAX_CLASS_FILTER, num_classes) if num_classes else MAX_CLASS_FILTER
    if length > limit:
        raise InvalidArgument(
            f"params.class_filter has {length} entries; at most {limit} (one per class of the model) are allowed"
        )
