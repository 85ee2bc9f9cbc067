"""`ragcli`: build, query and evaluate vector indexes of statutes, items and images.

Thin by design: each command parses its options, calls one library function and prints the result
(text, or JSON with `--json`). Heavy imports happen inside commands so `ragcli --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from indexes.checks import MAX_BATCH_SIZE, MAX_SEED
from indexes.errors import UserError

__version__ = "0.1.0"

DEVICE = click.Choice(["auto", "cpu", "cuda"])
BATCH = 64  # queries per encoder pass in batch runs


class RagcliGroup(click.Group):
    """Turns `UserError` and click's usage errors into one stderr line and exit code 2; other errors into
    exit 1 (with the traceback under -v). Library warnings stay off the terminal unless -v."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        try:
            with warnings.catch_warnings():
                if "-v" not in (args or sys.argv[1:]) and "--verbose" not in (args or sys.argv[1:]):
                    warnings.simplefilter("ignore")
                code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as err:  # a usage error: one line, not click's Usage block
            hint = f" (see '{err.ctx.command_path} --help')" if getattr(err, "ctx", None) else ""
            click.echo(f"error: {err.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:  # a bug, not a user mistake
            if ctx.obj and ctx.obj.get("verbose"):
                traceback.print_exc()
            else:
                click.echo(f"internal error: {type(err).__name__}: {err} (run with -v for the traceback)", err=True)
            ctx.exit(1)


def emit(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """Print `result` as JSON, or through its text renderer. Under torchrun only rank 0 speaks for the run."""
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    else:
        click.echo(text(result))


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: machine-readable output; also silences progress bars."""

    def silence(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            from indexes.runtime import set_progress

            set_progress(False)
        return value

    return click.option("--json", "as_json", is_flag=True, callback=silence, expose_value=True,
                        help="Print JSON instead of text (and no progress bars).")(fn)


@click.group(cls=RagcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ragcli")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for internal errors.")
@click.pass_context
def ragcli(ctx: click.Context, verbose: bool) -> None:
    """Attentive retrieval and recommendation served from FAISS indexes."""
    ctx.ensure_object(dict)["verbose"] = verbose


# ---- index ------------------------------------------------------------------------------------
@ragcli.group()
def index() -> None:
    """Build, inspect and query vector indexes."""


@index.command("build")
@click.option("--corpus", required=True, help="coliee | images | ml-100k | ml-1m | PATH to interactions.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the corpus files are.")
@click.option("--encoder", help="Encoder for the corpus (family-specific; see README).")
@click.option("--model", type=click.Path(path_type=Path), help="A trained model directory.")
@click.option("--hybrid", type=click.Path(path_type=Path),
              help="coliee: a hybrid saved by `eval coliee --save-hybrid` or `--protocol forward --save-pipeline`.")
@click.option("--images", type=click.Path(path_type=Path), help="Image folder (corpus images).")
@click.option("--condition", help="Instruction for conditional image embeddings (FocalLens).")
@click.option("--kind", default="flat", show_default=True, help="flat | hnsw | ivf-flat | ivf-pq | a FAISS factory string.")
@click.option("--metric", type=click.Choice(["ip", "l2", "cosine"]), help="Default: the family's.")
@click.option("--backend", type=click.Choice(["faiss", "milvus"]), default="faiss", show_default=True,
              help="faiss: files in the index folder; milvus: a collection at --uri.")
@click.option("--uri", help="milvus: a local *.db file (Milvus Lite) or http://host:19530 (token: $RAGCLI_MILVUS_TOKEN).")
@click.option("--shard", callback=lambda _ctx, _param, value: _shard(value),
              help="I/N: embed only the I-th of N slices of the corpus into --shard-dir (no index is built).")
@click.option("--shard-dir", type=click.Path(path_type=Path), help="Where --shard writes its vector file.")
@click.option("--from-shards", type=click.Path(path_type=Path),
              help="Build the index from the vector files every --shard I/N wrote into this folder.")
@click.option("--name", help="Index name (under $RAGCLI_HOME) or a path (contains '/', or starts with '.' or '~'). Default: the corpus name.")
@click.option("--overwrite", is_flag=True, help="Replace an index ragcli wrote under that name.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@json_option
def index_build(corpus: str, name: str | None, overwrite: bool, as_json: bool, **options: Any) -> None:
    """Encode a corpus and write its index (atomically: a failed build leaves nothing behind)."""
    from indexes import BuildRequest, build_index, index_path
    from indexes.registry import build_shard

    request = BuildRequest(corpus=corpus, **options)
    if request.shard is not None:
        return emit(build_shard(request), as_json, lambda r: f"wrote shard {r['shard']}: {r['rows']} x {r['dim']} to {r['file']}")
    engine = build_index(request, name or Path(corpus).stem, overwrite=overwrite)
    emit({"path": str(index_path(name or Path(corpus).stem)), **engine.index.info()}, as_json, _format_info)


def _shard(value: str | None) -> tuple[int, int] | None:
    from indexes.shards import parse_shard

    return None if value is None else parse_shard(value)


@index.command("info")
@click.argument("name")
@json_option
def index_info(name: str, as_json: bool) -> None:
    """Show an index's manifest: rows, kind, metric, encoder, checksums, search device."""
    from indexes import index_path, load_vectors

    path = index_path(name)
    emit({"path": str(path), **load_vectors(path).info()}, as_json, _format_info)


@index.command("list")
@json_option
def index_list(as_json: bool) -> None:
    """List the named indexes under $RAGCLI_HOME."""
    from indexes import list_indexes, ragcli_home

    emit(list_indexes(), as_json, lambda rows: "\n".join(
        f"{r['name']:<24} {r.get('rows', '?'):>9} rows  {r.get('kind', '')}  {r.get('metric', '')}  {r.get('encoder', r.get('error', ''))}"
        for r in rows) or f"no indexes under {ragcli_home() / 'indexes'}")


def _filter(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise UserError(f"--where takes a JSON filter such as '[\"genre\", \"==\", \"Drama\"]', got {value!r}") from None


@index.command("query")
@click.argument("name")
@click.argument("text", required=False)
@click.option("--history", help="Comma-separated item ids, oldest first (recsys indexes).")
@click.option("--image", type=click.Path(path_type=Path), help="Query image (image indexes).")
@click.option("--condition", help="Instruction for a conditional image query.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path),
              help="Batch: a file of queries (one per line, TSV qid<TAB>query, or JSONL).")
@click.option("--output", type=click.Path(path_type=Path), help="Batch: write a TREC run (or JSONL for *.jsonl) here.")
@click.option("--run-id", default="ragcli", show_default=True, help="Batch: the run file's RUNID column.")
@click.option("-k", "--hits", "k", type=click.IntRange(1, 1_000_000), default=10, show_default=True,
              help="Results per query.")
@click.option("--where", callback=_filter, help='Payload filter as JSON: ["year", ">=", 1990] or {"and": [...]}.')
@click.option("--skip-unknown", is_flag=True, help="Drop unknown history items instead of failing (recsys).")
@click.option("--sheet", type=click.Path(path_type=Path), help="Write a contact sheet PNG (image indexes).")
@click.option("--explain", is_flag=True, help="On the --sheet, heat maps of what makes each neighbour similar (Grad-CAM).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--shard", is_flag=True, help="Split the index across GPUs instead of replicating it.")
@json_option
def index_query(name: str, text: str | None, history: str | None, image: Path | None, condition: str | None,
                queries_file: Path | None, output: Path | None, run_id: str, k: int, where: Any, skip_unknown: bool,
                sheet: Path | None, explain: bool, device: str, shard: bool, as_json: bool) -> None:
    """Query an index with TEXT, --history or --image (or a batch with --queries FILE) and print ranked results."""
    from indexes import Query, open_index

    if sum(x is not None for x in (text, history, image, queries_file)) != 1:
        raise UserError("give exactly one of TEXT, --history, --image or --queries FILE")
    if output is not None and queries_file is None:
        raise UserError("--output writes the run of a --queries batch")
    if explain and sheet is None:
        raise UserError("--explain draws on the contact sheet: give --sheet FILE.png")
    if text is not None and not text.strip():
        raise UserError("the query text is empty")
    items = None if history is None else [h.strip() for h in history.split(",") if h.strip()]
    if history is not None and not items:
        raise UserError("--history is empty")
    engine = open_index(name, device=device, shard=shard)
    options = {"skip_unknown": True} if skip_unknown else {}
    if queries_file is not None:
        return _batch_query(engine, queries_file, output, run_id, k, where, options, as_json)
    query = Query(text=text, history=items, image=image, condition=condition)
    hits = engine.query(query, k, where=where, **options)
    if sheet is not None:
        if not hasattr(engine, "contact_sheet"):
            raise UserError("--sheet draws image neighbours; this is not an image index")
        engine.contact_sheet(query, hits, sheet, explain=explain)
    emit([{"rank": r, **h.to_dict()} for r, h in enumerate(hits, 1)], as_json, _format_hits)


def _batch_query(engine: Any, queries_file: Path, output: Path | None, run_id: str, k: int, where: Any,
                 options: dict[str, Any], as_json: bool) -> None:
    """Answer a query file in batches (one encoder pass each), then write or print the run."""
    from indexes.runs import read_query_file, trec_lines, write_run
    from indexes.runtime import progress

    queries = read_query_file(queries_file, engine.field)
    hits: list[Any] = []
    with progress(total=len(queries), desc="queries", unit="q") as bar:
        for start in range(0, len(queries), BATCH):
            hits += engine.query_batch(queries[start:start + BATCH], k, where=where, **options)
            bar.update(min(BATCH, len(queries) - start))
    qids = [q.qid for q in queries]
    if output is not None:
        write_run(output, qids, hits, run_id)
        emit({"queries": len(queries), "output": str(output)}, as_json, lambda r: f"wrote {r['queries']} queries to {r['output']}")
    elif as_json:
        emit([{"qid": q, "hits": [h.to_dict() for h in ranked]} for q, ranked in zip(qids, hits)], True, str)
    else:
        click.echo("\n".join(trec_lines(qids, hits, run_id)))


def _format_info(info: dict[str, Any]) -> str:
    encoder = info.get("encoder", {})
    return "\n".join([
        f"index    {info.get('path', '')}",
        f"rows     {info['rows']}   dim {info['dim']}   metric {info['metric']}   kind {info['kind']}",
        f"encoder  {encoder.get('name', '?')} ({encoder.get('family', '?')})",
        f"search   {info.get('search_device', '')}",
        f"created  {info.get('created_at', '')}",
    ])


def _format_hits(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no results"
    lines = []
    for row in rows:
        payload = row.get("payload", {})
        label = next((str(payload[c]) for c in ("title", "caption", "name", "path") if payload.get(c)), "")
        mark = "  [selected]" if payload.get("selected") else ""  # the statute engine's answer set
        lines.append(f"{row['rank']:>3}. {str(row['id']):<14} {row['score']:8.4f}  {label}{mark}")
        if payload.get("explanation"):
            lines.append(f"       why: {payload['explanation']}")
    return "\n".join(lines)


# ---- train / eval / data / embed: filled by the model families --------------------------------
NOT_REPLAYED = frozenset({"out", "overwrite", "resume", "as_json"})  # where a replay writes is asked anew
RENAMED = {"pre_ln": ("post_ln", lambda pre_ln: not pre_ln)}  # recorded name -> (option, value)


def _replay(ctx: click.Context, _param: click.Parameter, path: Path | None) -> None:
    """Make a recorded run's settings the defaults of this command's options (given options win)."""
    if path is None:
        return
    from indexes.records import recorded_settings

    names = {p.name for p in ctx.command.params} - NOT_REPLAYED
    defaults = {}
    for key, value in recorded_settings(path).items():
        name, convert = RENAMED.get(key, (key, lambda v: v))
        if name in names and value is not None:
            value = convert(value)
            defaults[name] = ",".join(map(str, value)) if isinstance(value, list) else value
    if not defaults:
        raise UserError(f"{path}: no settings of `train {ctx.command.name}` in it")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


class ReplayableCommand(click.Command):
    """A `train` command: `--config training.json` replays a recorded run's settings; options given on
    the command line override them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.insert(0, click.Option(
            ["--config", "replay"], type=click.Path(path_type=Path, dir_okay=False), is_eager=True,
            expose_value=False, callback=_replay,
            help="A run's training.json: its settings become the defaults (options given here win)."))


class TrainGroup(click.Group):
    command_class = ReplayableCommand


@ragcli.group(cls=TrainGroup)
def train() -> None:
    """Train a model (sasrec, paraformer, attentive-cnn, bi-encoder, focallens)."""


@ragcli.group("eval")
def evaluate() -> None:
    """Evaluate a model or retriever (sasrec, coliee, images)."""


@ragcli.group()
def data() -> None:
    """Fetch and inspect datasets."""


@ragcli.group()
def plot() -> None:
    """Pictures of runs: training curves."""


@ragcli.group()
def embed() -> None:
    """Embed raw material into vectors."""


# ---- recsys commands ---------------------------------------------------------------------------
from recsys import checks as sasrec_limits  # noqa: E402  (light: no torch)

DATA_FORMATS = click.Choice(["auto", "sasrec", "csv", "tsv", "parquet", "movielens", "recbole"])
FETCHABLE = click.Choice(["ml-100k", "ml-1m", "ml-20m"])


def _cutoffs(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in value.split(",") if k.strip())
    except ValueError:
        raise UserError(f"--k takes comma-separated integers, got {value!r}") from None
    if not ks or not all(1 <= k <= sasrec_limits.MAX_CUTOFF for k in ks):
        raise UserError(f"--k takes cut-offs in [1, {sasrec_limits.MAX_CUTOFF}], got {value!r}")
    return ks


@train.command("sasrec")
@click.option("--data", required=True, help="Interactions file or folder, or a fetched dataset (ml-1m).")
@click.option("--format", "fmt", type=DATA_FORMATS, default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out model directory (one ragcli wrote).")
@click.option("--loss", type=click.Choice(["ce", "bce", "sampled-ce", "gbce"]), default="ce", show_default=True)
@click.option("--epochs", type=click.IntRange(1, sasrec_limits.MAX_EPOCHS), default=200, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=128, show_default=True)
@click.option("--maxlen", type=click.IntRange(1, sasrec_limits.MAX_MAXLEN), default=50, show_default=True,
              help="Longest history the model reads.")
@click.option("--hidden", type=click.IntRange(1, sasrec_limits.MAX_HIDDEN), default=64, show_default=True)
@click.option("--blocks", type=click.IntRange(1, sasrec_limits.MAX_BLOCKS), default=2, show_default=True)
@click.option("--heads", type=click.IntRange(1, sasrec_limits.MAX_HIDDEN), default=1, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="Learning rate after the warm-up: constant, or a half cosine down to 0 at --epochs.")
@click.option("--warmup-epochs", type=click.IntRange(0, sasrec_limits.MAX_EPOCHS), default=0, show_default=True,
              help="Raise the learning rate linearly from 0 over this many epochs (fewer than --epochs).")
@click.option("--negatives", "n_negatives", type=click.IntRange(1, sasrec_limits.MAX_NEGATIVES), default=256,
              show_default=True, help="sampled-ce / gbce.")
@click.option("--gbce-t", type=click.FloatRange(0, 1), default=0.75, show_default=True, help="gbce calibration t.")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True,
              help="AdamW decay of linear weights (never biases or LayerNorm).")
@click.option("--decay-embeddings", is_flag=True, help="Decay the item and position embeddings too.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="bf16 autocast; auto: bf16 on CUDA, float32 on CPU.")
@click.option("--post-ln", is_flag=True, help="Post-LN blocks (default: pre-LN, as in the paper's equations).")
@click.option("--patience", type=click.IntRange(1, sasrec_limits.MAX_EPOCHS), default=10, show_default=True,
              help="Evaluations without improvement.")
@click.option("--eval-every", type=click.IntRange(1, sasrec_limits.MAX_EPOCHS), default=1, show_default=True,
              help="Validate every N epochs.")
@click.option("--k-core", type=click.IntRange(0, sasrec_limits.MAX_COUNT), default=0, show_default=True,
              help="Keep users and items with >= K interactions.")
@click.option("--min-len", type=click.IntRange(1, sasrec_limits.MAX_COUNT), default=1, show_default=True,
              help="Drop users with fewer interactions.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue from this checkpoint.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@json_option
def train_sasrec_command(data: str, fmt: str, out: Path, post_ln: bool, as_json: bool, **options: Any) -> None:
    """Train SASRec on next-item prediction; the best checkpoint (validation nDCG@10) goes to --out."""
    from recsys.train import train_from_path

    summary = train_from_path(data, out, fmt=fmt, pre_ln=not post_ln, **options)
    emit(summary, as_json, lambda s: (
        f"saved {s['out']}: best validation nDCG@10 {s['best_valid_nDCG@10']:.4f} at epoch {s['best_epoch']} "
        f"of {s['epochs_run']} ({s['seconds_per_epoch']:.1f} s/epoch, {s['users']} users, {s['items']} items)"))


@plot.command("training")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--title", help="Figure title (default: the model directory).")
@json_option
def plot_training_command(model_dir: Path, out: Path, title: str | None, as_json: bool) -> None:
    """Draw MODEL_DIR's training.json (SASRec, Paraformer, Attentive CNN or FocalLens): loss and validation
    metrics per epoch, the best epoch marked."""
    from indexes.records import plot_training

    drawn = plot_training(model_dir, out, title)
    emit(drawn, as_json, lambda d: f"wrote {d['out']}: {', '.join(d['series'])} over {d['epochs']} epochs")


@evaluate.command("sasrec")
@click.option("--data", required=True, help="The interactions the model was trained on (path or fetched name).")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=DATA_FORMATS, default="auto", show_default=True)
@click.option("--protocol", type=click.Choice(["full", "sampled100"]), default="full", show_default=True)
@click.option("--k", "ks", default="1,5,10,20", show_default=True, callback=_cutoffs, help="Cut-offs.")
@click.option("--keep-seen", is_flag=True, help="Rank the user's history items too (full protocol).")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the results as JSON here.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@json_option
def eval_sasrec_command(as_json: bool, **options: Any) -> None:
    """Success@K, nDCG@K and RR@K on each user's last item (leave-one-out test)."""
    from recsys.evaluate import evaluate_model

    result = evaluate_model(**options)
    emit(result, as_json, lambda r: f"{r['protocol']} ranking, {r['users']} users\n" + "\n".join(
        f"{name:<10} {value:.4f}" for name, value in r["metrics"].items()))


@data.command("fetch")
@click.argument("name", type=FETCHABLE)
@click.option("--dir", "root", type=click.Path(path_type=Path), help="Data folder (default: $RAGCLI_HOME/data).")
@json_option
def data_fetch_command(name: str, root: Path | None, as_json: bool) -> None:
    """Download a MovieLens archive from GroupLens (checksum-verified, resumable) and unpack it."""
    from recsys.fetch import fetch

    emit({"dataset": name, "path": str(fetch(name, root))}, as_json, lambda r: f"{r['dataset']} is in {r['path']}")


@data.command("stats")
@click.argument("path")
@click.option("--format", "fmt", type=DATA_FORMATS, default="auto", show_default=True)
@json_option
def data_stats_command(path: str, fmt: str, as_json: bool) -> None:
    """Users, items, interactions and sequence-length percentiles of an interactions dataset."""
    from recsys.data import dataset_stats

    stats = dataset_stats(path, fmt)
    emit(stats, as_json, lambda s: "\n".join([
        f"users         {s['users']}", f"items         {s['items']}", f"interactions  {s['interactions']}",
        "length        " + "  ".join(f"{k} {v:g}" for k, v in s["length"].items()),
        f"item columns  {', '.join(s['item_columns']) or '-'}"]))


# ---- retrieval commands ------------------------------------------------------------------------
@evaluate.command("coliee")
@click.option("--data-dir", type=click.Path(path_type=Path), help="COLIEE folder. Default: the bundled sample.")
@click.option("--years", default="R03", show_default=True, help="Test years: R03, H30..R01, R02,R03.")
@click.option("--model", default="hybrid", show_default=True, help="bm25 | dense | hybrid | a trained model directory.")
@click.option("--valid-years", help="Tune the set-selection ratio (and hybrid weights) on these years.")
@click.option("--encoder", help="Sentence encoder of dense/hybrid: local path or hub id. Default: all-MiniLM-L6-v2.")
@click.option("--rerank", type=click.Path(path_type=Path), help="hybrid: also fuse this trained model's scores.")
@click.option("--fusion", type=click.Choice(["wsum", "rrf"]), default="wsum", show_default=True,
              help="hybrid: weighted sum of normalised scores (weights tuned) or reciprocal-rank fusion (ranx).")
@click.option("--paper-rerank", is_flag=True,
              help="--model DIR as its paper runs it: re-rank BM25's top --paper-top-n by alpha * p + (1 - alpha) * BM25; answer the best article.")
@click.option("--paper-top-n", type=click.IntRange(1, 1000), default=10, show_default=True, help="--paper-rerank: BM25 candidates.")
@click.option("--paper-alpha", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="--paper-rerank: weight of the model's probability.")
@click.option("--run", type=click.Path(path_type=Path), help="Write a COLIEE/TREC run file: QID Q0 ARTICLE RANK SCORE RUNID.")
@click.option("--run-id", help="RUNID column of the run file. Default: the model name.")
@click.option("--save-hybrid", type=click.Path(path_type=Path),
              help="hybrid: save the (tuned) weights and selection ratio here, for `index build --hybrid`.")
@click.option("--save-pipeline", type=click.Path(path_type=Path),
              help="forward, hybrid: then fit the same recipe for the next exam (tuned on the last --tune-years "
                   "years, encoder fine-tuned on the years before) and save it here, for `index build --hybrid`.")
@click.option("--overwrite", is_flag=True, help="Replace a hybrid or pipeline ragcli saved at --save-hybrid / --save-pipeline.")
@click.option("--protocol", type=click.Choice(["single", "forward"]), default="single", show_default=True,
              help="forward: tune each test year on the years before it only, compare with BM25 (bootstrap).")
@click.option("--tune-years", type=click.IntRange(1, 50), default=3, show_default=True,
              help="forward: how many earlier years to tune on.")
@click.option("--finetune-epochs", type=click.IntRange(0, 100), default=0, show_default=True,
              help="forward, dense / hybrid: fine-tune the encoder per test year on the years before its tuning years.")
@click.option("--rerank-epochs", type=click.IntRange(0, 100), default=0, show_default=True,
              help="forward: train a MiniLM cross-encoder per test year on the years before its tuning years and "
                   "re-rank the first stage's candidates with it (set cut at a tuned probability).")
@click.option("--rerank-negatives", type=click.IntRange(1, 1000), default=7, show_default=True,
              help="forward: hard negatives per question for the cross-encoder (best non-gold BM25 / dense articles).")
@click.option("--rerank-candidates", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="forward: most candidates re-ranked (fewer where the tuning years reach Recall@N 0.95).")
@click.option("--rerank-once", is_flag=True,
              help="forward: train the cross-encoder for the first test year only and keep it for the later ones.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@json_option
def eval_coliee(years: str, valid_years: str | None, protocol: str, tune_years: int, finetune_epochs: int,
                rerank_epochs: int, rerank_negatives: int, rerank_candidates: int, rerank_once: bool,
                paper_rerank: bool, paper_top_n: int, paper_alpha: float, save_pipeline: Path | None, as_json: bool,
                **options: Any) -> None:
    """Macro SetP / SetR / SetF2 of the selected article sets (as COLIEE scores them), R@K and AP."""
    from retrieval.coliee import parse_years

    if paper_rerank and protocol == "forward":
        raise UserError("--paper-rerank scores one trained model as its paper does; it belongs to --protocol single")

    if finetune_epochs and protocol != "forward":
        raise UserError("--finetune-epochs belongs to --protocol forward (else: train bi-encoder, then --encoder DIR)")
    if (rerank_epochs or save_pipeline) and protocol != "forward":
        raise UserError(f"{'--rerank-epochs' if rerank_epochs else '--save-pipeline'} belongs to --protocol forward")
    if protocol == "forward":
        from retrieval.protocol import forward_evaluate

        ignored = [f"--{name.replace('_', '-')}" for name in ("rerank", "run", "run_id", "save_hybrid")
                   if options.get(name)] + (["--valid-years"] if valid_years else [])
        if ignored:
            raise UserError(f"--protocol forward chooses its own tuning years; drop {', '.join(ignored)}")
        result = forward_evaluate(options["data_dir"], parse_years(years), options["model"], tune_years,
                                  options["encoder"], options["device"], finetune_epochs, fusion=options["fusion"],
                                  rerank_epochs=rerank_epochs, rerank_negatives=rerank_negatives,
                                  rerank_once=rerank_once, rerank_candidates=rerank_candidates,
                                  save_pipeline=save_pipeline, overwrite=options["overwrite"])
        emit(result, as_json, _format_forward)
        return
    from retrieval.evaluate import evaluate_coliee

    valid = parse_years(valid_years) if valid_years is not None else ()  # `--valid-years ''` is an error
    result = evaluate_coliee(years=parse_years(years), valid_years=valid,
                             paper=(paper_top_n, paper_alpha) if paper_rerank else None, **options)
    emit(result, as_json, _format_coliee)


def _format_forward(result: dict[str, Any]) -> str:
    def row(name: str, r: dict[str, Any]) -> str:
        f2, bm25 = r["metrics"]["SetF2"] if "metrics" in r else r["SetF2"], r["bm25_SetF2"]
        low, high = r["SetF2_interval"]
        gain_low, gain_high = r["gain_interval"]
        return (f"{name:<8} {f2:.4f} [{low:.3f}, {high:.3f}]  BM25 {bm25:.4f}  "
                f"gain {r['gain_over_bm25']:+.4f} [{gain_low:+.3f}, {gain_high:+.3f}]")

    def reranked(r: dict[str, Any]) -> list[str]:
        if "gain_over_first_stage" not in r:
            return []
        low, high = r["gain_over_first_stage_interval"]
        line = (f"{'':<8} first stage {r['first_stage_SetF2']:.4f}, re-ranker gain {r['gain_over_first_stage']:+.4f} "
                f"[{low:+.3f}, {high:+.3f}]")
        if "rerank" in r:
            s = r["rerank"]
            line += (f"  N {s['candidates']} (R@N tune {s['tune_recall']:.3f}, test {s['test_recall']:.3f}), "
                     f"threshold {s['threshold']:.2f}, trained on {s['trained_on'][0]}..{s['trained_on'][-1]} "
                     f"({s['pairs']} pairs, {s['train_seconds']:.0f} s)")
        return [line]

    def pipeline(p: dict[str, Any]) -> list[str]:
        weights = " ".join(f"{k} {v:.2f}" for k, v in p["weights"].items())
        trained = f", encoder fine-tuned on {p['trained_on'][0]}..{p['trained_on'][-1]}" if p["trained_on"] else ""
        return [f"pipeline for the next exam saved to {p['out']}: tuned on {','.join(p['tuned_on'])}{trained}, "
                f"weights {weights}, ratio {p['ratio']:.2f} ({p['train_seconds']:.0f} s)"]

    years = [line for r in result["years"] for line in
             [row(r["year"], r) + f"  (tuned on {','.join(r['tuned_on'])}, ratio {r['ratio']:.2f})", *reranked(r)]]
    return "\n".join([f"{result['model']}, forward protocol (macro SetF2, 95% bootstrap intervals):", *years,
                      row("pooled", result["pooled"]) + f"  (mean of years {result['pooled']['mean_year_SetF2']:.4f})",
                      *reranked(result["pooled"]), *(pipeline(result["pipeline"]) if "pipeline" in result else [])])


def _format_coliee(result: dict[str, Any]) -> str:
    tuned = f"tuned on {','.join(result['valid_years'])}" if result["valid_years"] else "untuned"
    weights = "  weights " + " ".join(f"{k} {v:.2f}" for k, v in result["weights"].items()) if "weights" in result else ""
    metrics = result["metrics"]
    return "\n".join([
        f"{result['model']} on {','.join(result['years'])} ({result['queries']} queries), {tuned}: ratio {result['ratio']:.2f}{weights}",
        "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("R@")),
        "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("R@")),
        *([f"run file {result['run']}"] if "run" in result else []),
        *([f"hybrid saved to {result['hybrid']}"] if "hybrid" in result else []),
    ])


def _neural_train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options `train paraformer` and `train attentive-cnn` share (ranges from retrieval.checks)."""
    from retrieval.checks import MAX_EPOCHS, MAX_NEGATIVES

    options = [
        click.option("--data-dir", type=click.Path(path_type=Path), help="COLIEE folder. Default: the bundled sample."),
        click.option("--train-years", default="H18..R01", show_default=True, help="Training years, e.g. H18..R01."),
        click.option("--valid-years", default="R02", show_default=True, help="Early-stopping years."),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Model directory to write."),
        click.option("--overwrite", is_flag=True, help="Replace an existing --out directory."),
        click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS), default=20, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
        click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=32, show_default=True),
        click.option("--negatives", type=click.IntRange(1, MAX_NEGATIVES), default=15, show_default=True,
                     help="Negatives per positive (half hard BM25/dense negatives, half random)."),
        click.option("--patience", type=click.IntRange(1, MAX_EPOCHS), default=4, show_default=True,
                     help="Stop after this many epochs without a better validation R@5 (recall)."),
        click.option("--device", type=DEVICE, default="auto", show_default=True),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return json_option(fn)


def _train_neural(architecture: str, out: Path, overwrite: bool, as_json: bool, data_dir: Path | None,
                  train_years: str, valid_years: str, **options: Any) -> None:
    from retrieval.models import train_model
    from retrieval.training import TrainConfig

    settings = {k: options.pop(k) for k in ("epochs", "lr", "batch_size", "negatives", "patience", "device", "seed")}
    summary = train_model(architecture, data_dir, train_years, valid_years, out, TrainConfig(**settings),
                          overwrite=overwrite, **options)
    emit(summary, as_json, lambda s: (
        f"{s['architecture']} saved to {s['out']}: best epoch {s['best_epoch']} of {len(s['history'])}, "
        f"valid R@5 {s['best_valid_R@5']:.4f}, {s['train_queries']} training queries, {s['train_seconds']} s"))


def _finetune_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`train paraformer --finetune-epochs`."""
    from retrieval.checks import MAX_EPOCHS

    return click.option("--finetune-epochs", type=click.IntRange(0, MAX_EPOCHS), default=0, show_default=True,
                        help="Fine-tune the sentence encoder on (query, gold article) pairs first (default: frozen).")(fn)


@train.command("paraformer")
@_neural_train_options
@click.option("--encoder", help="Sentence encoder: local path or hub id. Default: all-MiniLM-L6-v2.")
@_finetune_option
def train_paraformer(**options: Any) -> None:
    """Train Paraformer (sparsemax sentence attention over frozen sentence embeddings) on COLIEE."""
    if options["encoder"] is None:
        options.pop("encoder")
    _train_neural("paraformer", **options)


@train.command("bi-encoder")
@click.option("--data-dir", type=click.Path(path_type=Path), help="COLIEE folder. Default: the bundled sample.")
@click.option("--train-years", default="H18..R01", show_default=True, help="Years whose questions train it.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Encoder directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an encoder directory ragcli wrote.")
@click.option("--encoder", help="Starting sentence encoder: local path or hub id. Default: all-MiniLM-L6-v2.")
@click.option("--epochs", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(2, 4096), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-5, show_default=True)
@click.option("--hard-negatives", type=click.IntRange(0, 32), default=1, show_default=True,
              help="Mined negatives per (question, article) pair.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@json_option
def train_bi_encoder_command(train_years: str, as_json: bool, **options: Any) -> None:
    """Fine-tune the sentence encoder on (question, gold article) pairs (sentence-transformers' trainer,
    MultipleNegativesRankingLoss with mined hard negatives); use it with --encoder DIR."""
    from retrieval.coliee import parse_years
    from retrieval.finetune import train_bi_encoder

    record = train_bi_encoder(options.pop("data_dir"), parse_years(train_years), options.pop("out"),
                              options.pop("encoder"), **options)
    emit(record, as_json, lambda r: (
        f"encoder saved to {r['out']}: {r['pairs']} pairs from {len(r['train_years'])} years, {r['epochs']} epochs, "
        f"loss {r['history'][0]['loss']:.4f} -> {r['history'][-1]['loss']:.4f}, {r['train_seconds']} s"))


@train.command("attentive-cnn")
@_neural_train_options
def train_attentive_cnn(**options: Any) -> None:
    """Train the Attentive CNN (word CNN + attention, sparsemax over sentences) from scratch on COLIEE."""
    _train_neural("attentive-cnn", **options)


# ---- vision commands ---------------------------------------------------------------------------
# Upper bounds of the vision options (here, not in vision/: importing it loads torch and timm).
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_EPOCHS = 10_000
MAX_GENERATED_IMAGES = 10_000_000


@embed.command("images")
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--encoder", required=True, help="timm:<model> | hf:<path-or-id> | van_b0 | a saved encoder dir.")
@click.option("--weights", type=click.Path(path_type=Path), help="Backbone weights (.safetensors file or dir).")
@click.option("--pooling", type=click.Choice(["default", "mean", "cls", "gem", "attentive"]), default="default",
              show_default=True, help="default = the model's own pooling.")
@click.option("--image-size", type=click.IntRange(8, MAX_IMAGE_SIDE), help="Input size (timm encoders). Default: the model's.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=32, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help=".npy (matrix) or .npz (embeddings + ids).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--shard", callback=lambda _ctx, _param, value: _shard(value),
              help="I/N: embed only the I-th of N slices (an .npz for `index build --from-shards`).")
@json_option
def embed_images(images: Path, as_json: bool, **options: Any) -> None:
    """Embed an image folder, IDX file or NPZ archive with an image encoder."""
    from vision.embed import embed_images as run

    emit(run(images, **options), as_json, lambda r: (
        f"wrote {r['images']} x {r['dim']} embeddings to {r['out']} "
        f"({r['images_per_s']} images/s, {r['encoder']['name']})"))


@ragcli.group()
def models() -> None:
    """Image encoder models: what --encoder can name."""


@models.command("list")
@click.argument("pattern", required=False)
@json_option
def models_list(pattern: str | None, as_json: bool) -> None:
    """List the models image encoders are built from (ragcli's backbones and timm's), matching PATTERN ('van*')."""
    from vision.encoders import list_encoders

    emit(list_encoders(pattern), as_json, lambda rows: "\n".join(
        f"{r['name']:<40} {r['source']:<6}  {'local weights' if r['local_weights'] else '-'}"
        for r in rows) or f"no models match {pattern!r}")

@data.command("make-conditional")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--n", type=click.IntRange(2, MAX_GENERATED_IMAGES), default=2000, show_default=True,
              help="Images in all (train + test).")
@click.option("--size", type=click.IntRange(16, MAX_IMAGE_SIDE), default=64, show_default=True, help="Image side in pixels.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@click.option("--source", type=click.Choice(["shapes", "digits"]), default="shapes", show_default=True,
              help="shapes: drawn shapes (shape, colour, size, position, background); digits: scikit-learn's "
                   "handwritten digits, coloured (digit, colour).")
@click.option("--overwrite", is_flag=True, help="Replace an existing directory.")
@json_option
def data_make_conditional(out: Path, overwrite: bool, as_json: bool, **options: Any) -> None:
    """Generate a conditional image benchmark: drawn shapes, or coloured handwritten digits (no download)."""
    from vision.synthetic import generate_dataset

    emit(generate_dataset(out, overwrite=overwrite, **options), as_json,
         lambda r: f"wrote {r['path']}: " + ", ".join(f"{k} {v} images" for k, v in r["splits"].items()))


@train.command("focallens")
@click.option("--data", required=True, help="A dataset directory (from `data make-conditional`, a CelebA folder, or images with labels), or 'generated'.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--attributes", callback=lambda _ctx, _param, value: None if value is None else value.split(","),
              help="Factors to train on, comma-separated (CelebA: Smiling,Eyeglasses). Default: all.")
@click.option("--unconditional", is_flag=True, help="Train the unconditional baseline (same network and loop, no instruction).")
@click.option("--valid-fraction", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Hold this share of the training images out; stop early on its mAP@R and keep the best epoch.")
@click.option("--patience", type=click.IntRange(1, MAX_IMAGE_EPOCHS), default=3, show_default=True,
              help="With --valid-fraction: epochs without a better validation mAP@R before stopping.")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Condition-aware augmentation: colour jitter, crops and flips, each only where it keeps the answer to the question an image is asked with.")
@click.option("--tower", default="cnn", show_default=True,
              help="Image tower: cnn (a small ResNet-style CNN conditioned by FiLM), vit (a small ViT with condition tokens; --patch-size/--embed-dim/--depth/--heads shape it), "
                   "or any encoder: timm:NAME, a registered backbone (van_b0), hf:PATH (condition tokens for ViT-style models, FiLM on each stage otherwise).")
@click.option("--tower-weights", type=click.Path(path_type=Path), help="Initial weights of a timm: tower (.safetensors file or dir); an hf: tower uses its directory's.")
@click.option("--epochs", type=click.IntRange(1, MAX_IMAGE_EPOCHS), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(2, MAX_BATCH_SIZE), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
@click.option("--image-size", type=click.IntRange(8, MAX_IMAGE_SIDE), default=32, show_default=True)
@click.option("--patch-size", type=click.IntRange(1, MAX_IMAGE_SIDE), default=8, show_default=True)
@click.option("--embed-dim", type=click.IntRange(8, 4096), default=64, show_default=True)
@click.option("--depth", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--heads", "num_heads", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--text-encoder", default=None, help="Instruction encoder: a sentence-transformers name/path or hf:<CLIP>. Default: all-MiniLM-L6-v2.")
@click.option("--overwrite", is_flag=True, help="Replace a model ragcli wrote at --out.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@json_option
def train_focallens_command(data: str, out: Path, as_json: bool, **options: Any) -> None:
    """Train FocalLens on (image, instruction, answer) triples and save it (safetensors + config)."""
    from vision.train_focallens import train_from_data

    emit(train_from_data(data, out, **options), as_json,
         lambda r: f"trained {r['model']} ({r['steps']} steps, {r['seconds']} s), loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}; saved to {r['path']}")


@evaluate.command("images")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="A labelled image dataset (a split directory, a `data make-conditional` folder or a CelebA folder).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate when --data has splits (CelebA: train, valid, test).")
@click.option("--encoder", help="Encoder spec (timm:NAME, hf:PATH, ...) for an unconditional encoder.")
@click.option("--weights", type=click.Path(path_type=Path), help="--encoder backbone weights (.safetensors file or dir).")
@click.option("--model", type=click.Path(path_type=Path), help="A FocalLens model directory.")
@click.option("--condition", "conditions", multiple=True,
              help="FACTOR (CelebA: an attribute, e.g. Smiling) or FACTOR=INSTRUCTION, repeatable; relevance = same FACTOR value. Default: every factor.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=64, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@json_option
def eval_images(as_json: bool, **options: Any) -> None:
    """Success@K (a relevant image in the top K), P@K and mAP@R per condition and averaged."""
    from vision.evaluate import evaluate_images

    emit(evaluate_images(**options), as_json, _format_image_metrics)


def _format_image_metrics(results: dict[str, dict[str, float]]) -> str:
    names = list(results["mean"])
    widths = [max(9, len(m) + 1) for m in names]  # "Success@10" is wider than a value
    rows = [f"{'condition':<14}" + "".join(f"{m:>{w}}" for m, w in zip(names, widths))]
    rows += [f"{c:<14}" + "".join(f"{r[m]:{w}.4f}" for m, w in zip(names, widths)) for c, r in results.items()]
    return "\n".join(rows)



# ---- runs and serving --------------------------------------------------------------------------
@evaluate.command("run")
@click.argument("run_file", type=click.Path(path_type=Path))
@click.option("--qrels", required=True, type=click.Path(path_type=Path), help="TREC qrels: QID 0 DOCID REL.")
@click.option("--metrics", default="nDCG@10,R@100,AP", show_default=True, help="ir_measures names, comma-separated.")
@click.option("--per-query", is_flag=True, help="Also list every query's values.")
@json_option
def eval_run(run_file: Path, qrels: Path, metrics: str, per_query: bool, as_json: bool) -> None:
    """Score any TREC run file against qrels with ir_measures (trec_eval's measures)."""
    from indexes.runs import score_run

    result = score_run(run_file, qrels, metrics)
    if not per_query:
        result.pop("per_query")
    emit(result, as_json, lambda r: f"{r['queries']} queries\n" + "\n".join(
        f"{name:<12} {value:.4f}" for name, value in r["measures"].items()) + "".join(
        f"\n{qid:<16} " + "  ".join(f"{m} {v:.4f}" for m, v in values.items())
        for qid, values in r.get("per_query", {}).items()))


@data.command("qrels")
@click.option("--corpus", type=click.Choice(["coliee"]), default="coliee", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), help="COLIEE folder. Default: the bundled sample.")
@click.option("--years", default="R03", show_default=True, help="Years: R03, H30..R01, R02,R03.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The qrels file to write.")
@click.option("--topics", type=click.Path(path_type=Path), help="Also write the questions as qid<TAB>text.")
@json_option
def data_qrels(corpus: str, data_dir: Path | None, years: str, out: Path, topics: Path | None, as_json: bool) -> None:
    """Write a corpus's gold answers as a TREC qrels file (and its questions as a topics file)."""
    from retrieval.coliee import parse_years
    from retrieval.evaluate import write_coliee_qrels

    emit(write_coliee_qrels(data_dir, parse_years(years), out, topics), as_json,
         lambda r: f"wrote {r['judgements']} judgements of {r['queries']} queries to {r['qrels']}")


@ragcli.command("serve")
@click.argument("names", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Server processes.")
@click.option("--api-key", envvar="RAGCLI_API_KEY", help="Require 'Authorization: Bearer KEY' (or set RAGCLI_API_KEY).")
@click.option("--batch-window-ms", type=click.FloatRange(0, 1000), default=0.0, show_default=True,
              help="Extra time an idle index waits to gather queries into one encoder pass (requests "
                   "arriving while it is busy are batched anyway).")
@click.option("--image-root", type=click.Path(path_type=Path, file_okay=False),
              help="Accept image queries by server-side path under this folder (default: uploads only).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def serve_command(names: tuple[str, ...], host: str, port: int, workers: int, api_key: str | None,
                  batch_window_ms: float, image_root: Path | None, device: str) -> None:
    """Serve indexes over HTTP (every named index under $RAGCLI_HOME, or NAMES), with a search page at /."""
    from indexes.http import serve

    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who can reach this machine can query"
                   f"{'' if api_key else ' (no --api-key)'}", err=True)
    click.echo(f"serving on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    serve(list(names), host, port, workers, api_key or None, device, batch_window_ms / 1000,
          image_root=None if image_root is None else str(image_root))


def main() -> None:
    """Console entry point."""
    ragcli(prog_name="ragcli")


if __name__ == "__main__":
    sys.exit(main())
