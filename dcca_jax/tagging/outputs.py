"""The tagger's files for people: tags of a folder (TSV, JSON, HTML contact sheet) and search hits (TSV, HTML).

``tags.tsv`` is the format the loaders read (:func:`dcca_jax.data.datasets.read_tags_tsv`): one line
``relative/path<TAB>tag tag ...`` per image, so a user can correct it and train on it; unreadable images follow
as ``#`` comment lines (which the loader ignores). The JSON beside it holds the scores; the HTML page shows a
thumbnail (inline base64 JPEG) of each image with its tags (tags filled from the prior in grey).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import pathlib
from collections.abc import Sequence

from dcca_jax import _io
from dcca_jax.tagging.tagger import Tagger


def thumbnail_data_uri(path: str | os.PathLike, *, size: int = 128) -> str | None:
    """A small JPEG thumbnail of an image file as a ``data:`` URI (None when the file cannot be read)."""
    from dcca_jax.visual import images as images_lib

    try:  # the package's one reader: same skip rules, pixel limit and reduced decoding as the pipeline
        im = images_lib.open_image(path, min_side=size)
    except images_lib.ImageLoadError:
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_STYLE = ("body{font-family:sans-serif;margin:1em}.g{display:flex;flex-wrap:wrap;gap:10px}"
          ".c{width:150px;font-size:12px;word-wrap:break-word}.c img{max-width:140px;max-height:140px;display:block}"
          ".p{color:#999}.f{color:#b00}")


def _cell(src: str | None, caption_html: str, name: str) -> str:
    img = f'<img src="{src}" alt="{html.escape(name)}">' if src else '<div class="f">(no preview)</div>'
    return f'<div class="c">{img}<b>{html.escape(name)}</b><br>{caption_html}</div>'


def _page(title: str, header: str, cells: Sequence[str], footer: str = "") -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{header}"
            f"<div class='g'>{''.join(cells)}</div>{footer}</body></html>\n")


def _sibling(out: pathlib.Path, suffix: str) -> pathlib.Path:
    return out.with_suffix(suffix) if out.suffix else out.with_name(out.name + suffix)


def tag_images(tagger: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, *, n: int = 5,
               model: str | None = None, weights: str | None = None, shard_size: int = 1024, batch_size: int = 32,
               html_max: int = 1000, thumb: int = 128) -> dict:
    """Tags every image of a folder with a tagger bundle; writes ``out`` (TSV), ``out.json`` and ``out.html``.

    The work goes through :meth:`Tagger.tag_folder` in ``<out>.shards/`` (resumable: a rerun skips the shards
    already done); the three files are then written shard by shard.

    Returns:
      ``{"tsv", "json", "html", "n_tagged", "failed", "model"}``.
    """
    tg = Tagger.load(tagger, model=model, weights=weights)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(images)
    json_path, html_path = _sibling(out, ".json"), _sibling(out, ".html")
    job = out.with_name(out.name + ".shards")
    failed, cells, n_tagged = [], [], 0
    with _io.atomic_write(out, mode="w") as tsv, _io.atomic_write(json_path, mode="w") as js:
        tsv.write(f"# tags by dcca_jax tagger {tg.path} (model {tg.model_name}); format: path<TAB>tags\n")
        js.write(json.dumps({"tagger": str(tg.path), "model": tg.model_name, "images": str(root.resolve()),
                             "n": int(n), "fill": tg.transfer.get("fill", "prior")})[:-1] + ', "results": [\n')
        first = True
        for shard in tg.tag_folder(root, job, n=n, shard_size=shard_size, batch_size=batch_size):
            for path, tags, scores, prior in zip(shard["paths"], shard["tags"], shard["scores"], shard["from_prior"]):
                tsv.write(f"{path}\t{' '.join(tags)}\n")
                entry = {"path": path, "tags": [{"tag": t, "score": s, "from_prior": p}
                                                for t, s, p in zip(tags, scores, prior)]}
                js.write(("" if first else ",\n") + json.dumps(entry))
                first = False
                n_tagged += 1
                if len(cells) < html_max:
                    caption = " ".join(f'<span class="p">{html.escape(t)}</span>' if p else html.escape(t)
                                       for t, p in zip(tags, prior))
                    cells.append(_cell(thumbnail_data_uri(root / path, size=thumb), caption, path))
            failed += shard["failed"]
        for f in failed:
            tsv.write(f"# unreadable: {f['path']}\t{f['reason']}\n")
        js.write("\n], \"failed\": " + json.dumps(failed) + "}\n")
    header = (f"<p>{n_tagged} images tagged by model {html.escape(tg.model_name)} of {html.escape(str(tg.path))}; "
              f"tags in grey were filled from the training prior (no neighbour voted for them)."
              + (f" Showing the first {html_max}." if n_tagged > html_max else "") + "</p>")
    footer = ""
    if failed:
        footer = ("<h2>Unreadable files</h2><ul>" + "".join(f"<li class='f'>{html.escape(f['path'])}: "
                                                          f"{html.escape(f['reason'])}</li>" for f in failed) + "</ul>")
    html_path.write_text(_page(f"Tags: {root.name}", header, cells, footer), encoding="utf-8")
    return {"tsv": str(out), "json": str(json_path), "html": str(html_path), "n_tagged": n_tagged, "failed": failed,
            "model": tg.model_name}


def search_images(tagger: str | os.PathLike, tags: str | Sequence[str], out: str | os.PathLike, *, k: int = 20,
                  images: str | os.PathLike | None = None, index_dir: str | os.PathLike | None = None,
                  model: str | None = None, weights: str | None = None, shard_size: int = 4096,
                  batch_size: int = 32, thumb: int = 160) -> dict:
    """Searches images by tags; writes ranked ``path<TAB>score`` lines to ``out`` and ``out.html`` (top hits).

    Without ``images`` the bundle's indexed training images are searched. With ``images`` that folder is indexed
    first (:meth:`Tagger.index_folder`, cached in ``index_dir``, by default ``<tagger>/indexes/<folder>-<hash>``,
    and resumable) and only its images are searched; their paths are written relative to it.

    Returns:
      ``{"tsv", "html", "hits", "known", "unknown", "indexed", "failed", "model"}``.
    """
    tg = Tagger.load(tagger, model=model, weights=weights)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    indexed, failed, collection, root = None, [], "training", None
    if images is not None:
        root = pathlib.Path(images).resolve()
        if index_dir is None:
            tag = hashlib.sha256(f"{root}|{tg.model_name}".encode()).hexdigest()[:10]
            index_dir = tg.path / "indexes" / f"{root.name}-{tg.model_name}-{tag}"
        res = tg.index_folder(root, index_dir, shard_size=shard_size, batch_size=batch_size)
        indexed, failed, collection = res["indexed"], res["failed"], "added"
    hits = tg.search(tags, k=k, collection=collection)

    def shown(p: str) -> str:
        return os.path.relpath(p, root) if root is not None else p

    with open(out, "w", encoding="utf-8") as f:
        for p, s in hits:
            f.write(f"{shown(p)}\t{s:.6f}\n")
    html_path = _sibling(out, ".html")
    cells = [_cell(thumbnail_data_uri(p, size=thumb), f"cosine {s:.3f}", f"{r}. {shown(p)}")
             for r, (p, s) in enumerate(hits, 1)]
    query = " ".join(hits.known)
    header = (f"<p>query: <b>{html.escape(query)}</b>"
              + (f"; unknown tags ignored: {html.escape(' '.join(hits.unknown))}" if hits.unknown else "")
              + f"; {len(hits)} hits by model {html.escape(tg.model_name)}"
              + (f" among {indexed} indexed images of {html.escape(str(root))}" if root is not None else
                 " among the tagger's training images") + ".</p>")
    html_path.write_text(_page(f"Search: {query}", header, cells), encoding="utf-8")
    return {"tsv": str(out), "html": str(html_path), "hits": [(shown(p), s) for p, s in hits], "known": hits.known,
            "unknown": hits.unknown, "indexed": indexed, "failed": failed, "model": tg.model_name}
