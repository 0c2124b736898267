"""Resource budgets, judged from headers before anything is decoded: a few kilobytes must never cost
gigabytes of memory or hours of model time."""

from __future__ import annotations

import os

from ..errors import ImageReadError

# Refuse anything larger than this many pixels before decoding it: a 20 kB PNG can
# declare 100k x 100k pixels and exhaust memory (a "decompression bomb").
MAX_PIXELS = 64_000_000


# Every input is judged by its declared decoded size before it is decoded (one home for the rule):
# never more than MAX_DECODED_BYTES, and above FREE_DECODED_BYTES never more than MAX_EXPANSION times
# the bytes it arrived as, so that a few kilobytes cannot cost gigabytes.
MAX_DECODED_BYTES = int(float(os.environ.get("TUMORSEG_MAX_DECODED_MB", "1024")) * 2**20)


FREE_DECODED_BYTES = 16 * 2**20


MAX_EXPANSION = 20


# The working copies count too (RGB copy, float temporaries, full-resolution probabilities, overlays):
# segmenting a 2D image peaks at ~28 bytes per pixel (tracemalloc, 3000x3000 PNG; the test
# test_working_set_of_a_large_image_stays_in_budget keeps it under this figure). A request may use
# up to FREE_WORKING_BYTES, beyond that at most MAX_WORKING_EXPANSION times the bytes it arrived as:
# an upload under 1 MB can never cost more than 300 MB.
WORKING_BYTES_PER_PIXEL = 32


MAX_WORKING_BYTES = int(float(os.environ.get("TUMORSEG_MAX_WORKING_MB", "2560")) * 2**20)  # a 64 M-voxel study


FREE_WORKING_BYTES = 64 * 2**20


MAX_WORKING_EXPANSION = 300


# Model time, known from a header before decoding: slices x the model's fixed input size. A study
# has at most MAX_STUDY_SLICES slices, in-plane at least MIN_STUDY_SIDE px, and beyond FREE_SLICES
# at most SLICES_PER_MB per MB received (a real slice is tens of kB even compressed).
MAX_STUDY_SLICES = int(os.environ.get("TUMORSEG_MAX_SLICES", "2048"))


MIN_STUDY_SIDE = 32


FREE_SLICES = 256


SLICES_PER_MB = 128


def _check_budget(
    path, amount: int, input_bytes: int | None, cap: int, free: int, ratio: int, over_cap: str, over_ratio: str
):
    """The one shape of every size rule: an absolute ceiling, and above ``free`` at most ``ratio`` times
    the bytes received. The messages are formatted with amount/input/ratio in MB and x."""
    mb = 2**20
    if amount > cap:
        raise ImageReadError(path, over_cap.format(mb=amount / mb, cap=cap / mb))
    if input_bytes and amount > free and amount > ratio * input_bytes:
        raise ImageReadError(
            path, over_ratio.format(mb=amount / mb, got=input_bytes, got_mb=input_bytes / mb, x=amount / input_bytes)
        )


def check_decoded_size(path, decoded_bytes: int, input_bytes: int | None = None, what: str = "image") -> None:
    """Refuse an input whose declared decoded size is over the budget, or far out of proportion to its file."""
    what = what.replace("{", "{{").replace("}", "}}")  # a zip member's name may hold braces
    _check_budget(
        path,
        decoded_bytes,
        input_bytes,
        MAX_DECODED_BYTES,
        FREE_DECODED_BYTES,
        MAX_EXPANSION,
        what + " would take {mb:,.0f} MB once decoded, over the {cap:,.0f} MB limit",
        what + " of {got:,} bytes declares {mb:,.0f} MB of pixels ({x:,.0f}x; a decompression bomb?)",
    )


def check_working_set(path, working_bytes: int, input_bytes: int | None, what: str) -> None:
    """Refuse work whose working memory is over the budget, or far out of proportion to the upload."""
    what = what.replace("{", "{{").replace("}", "}}")
    _check_budget(
        path,
        working_bytes,
        input_bytes,
        MAX_WORKING_BYTES,
        FREE_WORKING_BYTES,
        MAX_WORKING_EXPANSION,
        what + " needs about {mb:,.0f} MB of working memory, over the {cap:,.0f} MB limit",
        what + " needs about {mb:,.0f} MB of working memory from {got_mb:,.2f} MB received (over "
        f"{MAX_WORKING_EXPANSION}x); send it downscaled (the model sees 256x256)",
    )


def check_model_time(path, slices: int, rows: int, cols: int, input_bytes: int | None, what: str = "study") -> None:
    """Refuse a study whose model time (slices at the model's fixed input size) a few bytes could buy."""
    if min(rows, cols) < MIN_STUDY_SIDE:
        raise ImageReadError(
            path,
            f"{what} slices are {cols}x{rows} px; the model needs at least {MIN_STUDY_SIDE}x{MIN_STUDY_SIDE} "
            f"(a volume stored in another axis order, or not an image volume?)",
        )
    if slices > MAX_STUDY_SLICES:
        raise ImageReadError(path, f"{what} has {slices:,} slices, over the limit of {MAX_STUDY_SLICES:,}")
    if input_bytes and slices > FREE_SLICES and slices > SLICES_PER_MB * input_bytes / 2**20:
        raise ImageReadError(
            path,
            f"{what} declares {slices:,} slices in {input_bytes / 2**20:,.2f} MB ({input_bytes / slices:,.0f} "
            "bytes per slice): not a real image volume",
        )
