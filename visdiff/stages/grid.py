"""Image grids for the VLM proposer: one JPEG per set, so that a VLM sees a whole sample in one
image (the paper's GPT-4V design) and a request stays two images however large the sample.

Each image is decoded upright and RGB (`sources.decode`), fit into a square cell with its aspect
kept, and centred on a neutral background; the grid is as near square as the count allows. An
image that cannot be decoded is left out and the caller is told which ones went in.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from visdiff.errors import InputError
from visdiff.sources.decode import ImageDecodeError, decode_image

BACKGROUND = (128, 128, 128)  # mid grey: neither a white nor a black image melts into it
GAP_PX = 4  # between cells, so that neighbouring images read as separate pictures
JPEG_QUALITY = 90


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) of the most nearly square grid for `count` cells, wider than tall.

    >>> [grid_shape(n) for n in (1, 2, 3, 4, 5, 16, 20)]
    [(1, 1), (2, 1), (2, 2), (2, 2), (3, 2), (4, 4), (5, 4)]
    """
    if count < 1:
        raise ValueError(f"a grid needs at least one cell, got {count}")
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def _fit(image: Image.Image, cell_px: int) -> Image.Image:
    """Scaled (down or up) so that its longer side is the cell's, aspect kept."""
    scale = cell_px / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def image_grid_members(
    images: list[bytes], *, cell_px: int, max_images: int
) -> tuple[bytes, list[int]]:
    """The grid JPEG and the indices (into `images`) of the images it shows, in order: the first
    `max_images` that decode; undecodable ones are passed over."""
    if cell_px < 1 or max_images < 1:
        raise ValueError(f"cell_px and max_images must be >= 1, got {cell_px}, {max_images}")
    cells: list[Image.Image] = []
    used: list[int] = []
    for index, data in enumerate(images):
        if len(cells) == max_images:
            break
        try:
            cells.append(_fit(decode_image(data), cell_px))
        except ImageDecodeError:
            continue
        used.append(index)
    if not cells:
        raise InputError(
            f"none of the {len(images)} images given for a grid could be decoded; "
            "check that the sampled files are images"
        )
    columns, rows = grid_shape(len(cells))
    step = cell_px + GAP_PX
    canvas = Image.new("RGB", (columns * step - GAP_PX, rows * step - GAP_PX), BACKGROUND)
    for slot, cell in enumerate(cells):
        row, column = divmod(slot, columns)
        left = column * step + (cell_px - cell.width) // 2
        top = row * step + (cell_px - cell.height) // 2
        canvas.paste(cell, (left, top))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), used


def image_grid(images: list[bytes], *, cell_px: int, max_images: int) -> tuple[bytes, int]:
    """A JPEG grid of up to `max_images` images and how many went in (undecodable ones are
    skipped; InputError when none decodes)."""
    data, used = image_grid_members(images, cell_px=cell_px, max_images=max_images)
    return data, len(used)
