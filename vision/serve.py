"""The images family: `--corpus images` builds an index from an image dataset with an encoder spec or a
FocalLens model (under a condition); its engine finds an image's neighbours, optionally as a contact sheet.

The encoder is saved inside the index directory (`model/`), so a query re-creates exactly the encoder
that embedded the corpus, random-init weights included.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from indexes import BuildRequest, Hit
from indexes.backends import build_vectors
from indexes.engine import Engine, Query
from indexes.errors import UserError
from indexes.files import inside
from indexes.index import ManifestIndex
from indexes.registry import Family, register_family
from indexes.shards import corpus_vectors
from vision.datasets import ImageFiles, ImageSet, decode_image, load_images
from vision.sheet import write_contact_sheet

MODEL_DIR = "model"


def open_image(path: str | Path) -> Image.Image:
    """Decode one image file; a missing or unreadable file is a UserError naming it."""
    return ImageFiles([Path(path)])[0]


def _clean_condition(condition: str | None) -> str | None:
    if condition is not None and not condition.strip():
        raise UserError("the condition is empty; give an instruction such as 'focus on the colour'")
    return None if condition is None else condition.strip()


def _load_encoder(kind: str, source: str | Path) -> Any:
    """A FocalLens model ('focallens') or an ImageEncoder ('encoder') from a spec or saved directory."""
    if kind == "focallens":
        from vision.focallens import load_focallens

        return load_focallens(source)
    from vision.encoders import create_encoder

    return create_encoder(str(source))


def _embed(encoder: Any, images: Any, condition: str | None, device: str, batch_size: int = 64) -> np.ndarray:
    """One call for both encoder kinds: FocalLens also takes the condition."""
    from vision.focallens import FocalLens

    if isinstance(encoder, FocalLens):
        return encoder.embed(images, condition, batch_size=batch_size, device=device)
    return encoder.embed(images, batch_size=batch_size, device=device)


def build_index(request: BuildRequest, out: Path) -> ManifestIndex | None:
    """Embed every image under `request.images` and save the index (with its encoder) to `out`."""
    if request.images is None:
        raise UserError("--corpus images needs --images DIR")
    if (request.encoder is None) == (request.model is None):
        raise UserError("give exactly one of --encoder SPEC or --model DIR")
    condition = _clean_condition(request.condition)
    kind, source = ("focallens", request.model) if request.model is not None else ("encoder", request.encoder)
    encoder = _load_encoder(kind, source)
    if kind == "focallens" and encoder.conditional and condition is None:
        raise UserError("a FocalLens model needs --condition (e.g. 'focus on the colour')")
    if kind == "encoder" and condition is not None:
        raise UserError("--condition needs a FocalLens --model; an --encoder embeds images unconditionally")
    corpus = load_images(request.images)
    vectors = corpus_vectors(request, corpus.ids, lambda rows: _embed(encoder, corpus.images[rows], condition, request.device))
    if vectors is None:  # one shard embedded (indexes.shards)
        return None
    source = Path(request.images).absolute()  # not resolved: a dataset published as a symlink moves
    index = build_vectors(
        vectors, corpus.ids, _payload(corpus, source), metric=request.metric or "cosine", **request.index_options(out),
        encoder={"family": "vision", **encoder.describe(), "kind": kind, "condition": condition,
                 "model_dir": MODEL_DIR, "images": str(source)},
    )
    index.save(out, extras={MODEL_DIR: encoder.save_pretrained}, overwrite=request.overwrite)
    return index


class ImageEngine(Engine):
    """Embeds query images (under the index's condition) with the encoder stored in the index, loaded once."""

    family, field = "vision", "image"

    def __init__(self, index: ManifestIndex, device: str = "auto"):
        super().__init__(index)
        info = index.encoder
        self.condition = info.get("condition")
        self.device = device
        self.encoder = _load_encoder(info.get("kind", "encoder"),
                                     inside(index.path, info.get("model_dir", MODEL_DIR), "model_dir"))

    def search(self, queries: list[Query], k: int, where: Any, exclude: Sequence[Sequence[Any]] | None) -> list[list[Hit]]:
        for query in queries:
            condition = _clean_condition(query.condition)
            if condition is not None and condition != self.condition:
                raise UserError(f"this index was built under the condition {self.condition!r}; "
                                "build another index for a different condition")
        images = [self.image_of(q) for q in queries]
        vectors = _embed(self.encoder, images, self.condition, self.device)
        return self.index.search(vectors, k=k, where=where, exclude=exclude)

    @staticmethod
    def image_of(query: Query) -> Image.Image:
        """The query's pixels: a PIL image as given, an upload (a binary file object), or the file it names."""
        if isinstance(query.image, Image.Image):
            return query.image
        if hasattr(query.image, "read"):
            return decode_image(query.image, query.qid or "upload")
        return open_image(query.image)

    def item_image(self, item_id: Any) -> Image.Image:
        """The pixels of an indexed image, from the file or archive row its payload names."""
        return _hit_image(Hit(item_id, 0.0, self.index.payloads([item_id])[0]))

    def explanation(self, query: Any, item_id: Any, size: int = 256) -> Image.Image:
        """The query and the indexed image `item_id` side by side, each under the heat map of what makes it
        similar to the other (`vision.explain`): what `POST /indexes/{name}/explain` returns."""
        from indexes.runtime import resolve_device
        from vision.explain import explain_pair, model_view, overlay

        image, neighbour = self.image_of(self.as_query(query)), self.item_image(item_id)
        maps = explain_pair(self.encoder, image, neighbour, self.condition, resolve_device(self.device))
        panels = [overlay(model_view(self.encoder, picture), heat, size) for picture, heat in zip((image, neighbour), maps)]
        canvas = Image.new("RGB", (2 * size, size))
        for i, panel in enumerate(panels):
            canvas.paste(panel, (i * size, 0))
        return canvas

    def contact_sheet(self, query: Any, hits: list[Hit], path: Path, explain: bool = False) -> None:
        """Write a PNG of the query image then its neighbours, captioned with id and score. With `explain`,
        each neighbour carries the heat map of what makes it similar to the query, and a second row shows
        the query under each neighbour's map (`vision.explain`)."""
        image = self.image_of(self.as_query(query))
        pictures = [_hit_image(hit) for hit in hits]
        views = None
        if explain:
            from indexes.runtime import progress, resolve_device
            from vision.explain import explain_pair, model_view, overlay

            maps = [explain_pair(self.encoder, image, picture, self.condition, resolve_device(self.device))
                    for picture in progress(pictures, desc="explaining", unit="img")]
            pictures = [overlay(model_view(self.encoder, picture), heat) for picture, (_, heat) in zip(pictures, maps)]
            views = [overlay(model_view(self.encoder, image), heat) for heat, _ in maps]
        neighbours = [(picture, str(hit.id), hit.score) for picture, hit in zip(pictures, hits)]
        title = self.condition or (Path(query).name if isinstance(query, (str, Path)) else "query")
        write_contact_sheet(path, image, neighbours, title=title, query_views=views)


def _payload(corpus: ImageSet, source: Path) -> pl.DataFrame:
    """Labels (and a `caption` joining them), plus where each image's pixels are: its file (`path`), or
    its `row` in the archive `path`."""
    labels = corpus.labels.drop("id")
    if labels.width:
        labels = labels.with_columns(caption=pl.concat_str(pl.all().cast(pl.Utf8), separator=", ", ignore_nulls=True))
    if corpus.paths is not None:
        return labels.with_columns(path=pl.Series([str(p.absolute()) for p in corpus.paths]))
    return labels.with_columns(path=pl.lit(str(source)), row=pl.Series(range(len(corpus)), dtype=pl.Int64))


@lru_cache(maxsize=2)
def _archive(path: str) -> ImageSet:
    return load_images(path)


def _hit_image(hit: Hit) -> Image.Image:
    """A neighbour's pixels, from the file or archive row its payload names."""
    row = hit.payload.get("row")
    return open_image(hit.payload["path"]) if row is None else _archive(hit.payload["path"]).images[int(row)]


FAMILY = register_family(Family(
    name="vision", corpora={"images": build_index}, opener=ImageEngine,
    build_options=frozenset({"images", "encoder", "model", "condition"}),
))
