"""``facial-search index``: index the faces of meme images (creates or updates an index: a file or any store URI)."""

from __future__ import annotations

import argparse

from facial_search.cli._common import add_model_options, check_above, check_at_least


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``index`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("index", help="index the faces of meme images (creates or updates an index)")
    s.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="image files or folders (searched recursively)")
    s.add_argument("--out", required=True, metavar="INDEX",
                   help="index to create or update: a file (memes.fsindex, file://...), milvus-lite://PATH.db or "
                   "milvus://HOST:PORT/COLLECTION")  # fmt: skip
    s.add_argument("--titles", metavar="CSV", help="sidecar CSV with columns file,title (e.g. imgflip.csv)")
    s.add_argument("--workers", type=int, metavar="N",
                   help="worker processes, or Ray actors with --executor ray (default: one per core; on a Ray "
                   "cluster, its CPUs)")  # fmt: skip
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--no-tiles", action="store_true",
                   help="no second look in tiles where the whole image shows no face (faster)")  # fmt: skip
    s.add_argument("--checkpoint-seconds", type=float, default=15.0, metavar="S",
                   help="save the index atomically at least this often while indexing (default 15)")  # fmt: skip
    s.add_argument("--executor", choices=("process", "ray"), default="process",
                   help="where the images are processed: local worker processes (default) or a Ray cluster "
                   "(needs pip install 'facial-search[ray]')")  # fmt: skip
    s.add_argument("--ray-address", metavar="ADDR",
                   help="with --executor ray: the cluster (auto, HOST:PORT or ray://HOST:PORT; default: start a "
                   "local Ray with --workers CPUs)")  # fmt: skip
    s.add_argument("--ann", choices=("exact", "hnsw", "ivf"),
                   help="file stores: search exactly, through HNSW graphs or through inverted files (IVF: the "
                   "large-store choice; recorded in the index; default: keep the index's setting, exact for a new "
                   "one)")  # fmt: skip
    s.add_argument("--hnsw-m", type=int, metavar="M", help="with --ann hnsw: links per node (HNSW M; default 16)")
    s.add_argument("--hnsw-ef-construction", type=int, metavar="N",
                   help="with --ann hnsw: candidates kept while linking (efConstruction; default 80)")  # fmt: skip
    s.add_argument("--hnsw-ef-search", type=int, metavar="N",
                   help="with --ann hnsw: candidates kept while searching (efSearch; default 192)")  # fmt: skip
    s.add_argument("--ivf-nlist", type=int, metavar="N",
                   help="with --ann ivf: the most lists a segment makes (IVF nlist; default 4096, for ~1M faces; "
                   "a segment of n rows makes about 4 sqrt(n), at most n/50)")  # fmt: skip
    s.add_argument("--ivf-nprobe", type=int, metavar="N",
                   help="with --ann ivf: lists scanned per query (IVF nprobe, at most nlist; default 16)")  # fmt: skip
    s.add_argument("--sample-ms", type=int, default=250, metavar="MS",
                   help="videos (mp4, mov, mkv, webm, animated GIF): look at a frame every MS milliseconds; each "
                   "face track is cut into moments, one entry each (default 250)")  # fmt: skip
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.indexing import build_index

    check_at_least(args.workers, "--workers")
    check_above(args.checkpoint_seconds, "--checkpoint-seconds")
    check_at_least(args.sample_ms, "--sample-ms")
    if args.ray_address is not None and args.executor != "ray":
        from facial_search.errors import OptionError

        raise OptionError("--ray-address: needs --executor ray")
    _store, report = build_index(
        args.inputs, args.out, titles=args.titles, embedder=args.embedder, model_path=args.model,
        workers=args.workers, progress=not args.no_progress, checkpoint_seconds=args.checkpoint_seconds,
        tiles=not args.no_tiles, executor=args.executor, ray_address=args.ray_address, ann=_ann(args),
        sample_ms=args.sample_ms,
    )  # fmt: skip
    _print_index_summary(report, args.out)
    return 0


def _ann(args: argparse.Namespace):
    """``build_index``'s ``ann`` from ``--ann`` and the ``--hnsw-*`` / ``--ivf-*`` options (OptionError, one
    line, for a bad mix or value: ``--ivf-nlist 0``, ``--ivf-nprobe`` above nlist, ``--ivf-*`` without
    ``--ann ivf``)."""
    from facial_search.errors import OptionError

    hnsw = {k: v for k, v in (("M", args.hnsw_m), ("ef_construction", args.hnsw_ef_construction),
                              ("ef_search", args.hnsw_ef_search)) if v is not None}  # fmt: skip
    ivf = {k: v for k, v in (("nlist", args.ivf_nlist), ("nprobe", args.ivf_nprobe)) if v is not None}
    if hnsw and args.ann != "hnsw":
        raise OptionError("--hnsw-m, --hnsw-ef-construction, --hnsw-ef-search: need --ann hnsw")
    if ivf and args.ann != "ivf":
        raise OptionError("--ivf-nlist, --ivf-nprobe: need --ann ivf")
    if args.ann not in ("hnsw", "ivf"):
        return args.ann
    from facial_search.index.ann import HNSWParams, IVFParams

    if args.ann == "hnsw":
        return HNSWParams(**hnsw)
    if "nlist" in ivf and "nprobe" not in ivf:  # a small --ivf-nlist alone: scan at most all its lists
        ivf["nprobe"] = max(1, min(IVFParams.nprobe, ivf["nlist"]))
    return IVFParams(**ivf)


def _print_index_summary(report, out) -> None:
    from facial_search.errors import SkipReason

    print(
        f"{out}: {report.scanned} images scanned, {report.processed} processed, {report.unchanged} unchanged"
        + (f", {report.removed} gone from the folder removed" if report.removed else "")
        + f"; +{report.added_faces} faces in {report.seconds:.1f} s"
        + (
            f" ({report.videos} video{'s' * (report.videos != 1)}, {report.video_seconds:.0f} s of video)"
            if report.videos
            else ""
        )
    )
    d = report.store  # the store's describe() at the end of the run
    embedder = f"{d['embedder']} v{d['embedder_version']} ({d['dim']}-d)" if "embedder_version" in d else d["embedder"]
    print(f"index: {d['images']} images, {d['faces']} faces, {d['skipped']} skipped, embedder {embedder}")
    if report.skipped:
        print("skipped this run: " + ", ".join(f"{n} {why.value}" for why, n in report.skipped.most_common()))
        for src, why in sorted(report.skipped_files.items()):
            if SkipReason.parse(why) is not SkipReason.NO_FACE:
                print(f"  {src}: {why}")
    if report.unreadable_folders:
        n = len(report.unreadable_folders)
        print(f"not read: {n} folder{'s' if n > 1 else ''} could not be listed (their images were left out)")
        for folder, why in sorted(report.unreadable_folders.items()):
            print(f"  {folder}: {why}")
