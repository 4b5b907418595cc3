"""`embps train`: the main job.  Starts a local cluster (shards, the oracle cacher, a gateway and a
trainer per rank, as processes on loopback), trains a CTR model on the chosen data with Bagpipe
lookahead caching (or the direct baseline), evaluates held-out AUC and log-loss (and hit rate@10 /
NDCG@10 on a sequence data set's ranking queries), prints throughput, cache hit rate and
parameter-server traffic, plots the curves and stops everything."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from embps.common.job_config import EMB_OPTIMIZERS, MODES, JobConfig, check_one_shard_per_trainer
from embps.compat.bagpipe_flags import with_table_sizes

COMMAND = "train"
HELP = "run a training job on a local cluster (the demo)"
EXTRA = "train"
# A model's data set and embedding width when the command line names none (Caser's, as Bagpipe ran it).
MODEL_DEFAULTS = {"caser": ("movielens-100k-seq", 50)}
DEFAULTS = ("synthetic", 32)
RANKING_FIGURES = (("hit_rate_at_10", "HR@10"), ("ndcg_at_10", "NDCG@10"))   # eval keys of ranking queries


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", default="data/train", help="PM files, logs and results go here")
    parser.add_argument("--model", default="dlrm", help="dlrm, wide_deep, dcn_v2, deepfm, fgcnn or caser")
    parser.add_argument("--dataset", default=None,
                        help='"synthetic" (the default), "movielens-100k", "movielens-100k-seq" (caser\'s default '
                             'and only choice) or "criteo:<TSV file or preprocessed dir>"')
    parser.add_argument("--scale", type=float, default=0.01, help="synthetic: fraction of Criteo's table sizes")
    parser.add_argument("--segments", type=int, default=0,
                        help="synthetic: K latent segments whose samples share rows, the co-occurrence a "
                             "placement finds (default 0: none)")
    parser.add_argument("--mode", default="sync", choices=MODES)
    parser.add_argument("--lookahead", type=int, default=64)
    parser.add_argument("--staleness", type=int, default=0,
                        help="bounded: s, the contributions a mirror may lag or hold back (0 = synchronous)")
    parser.add_argument("--store-rate", type=float, default=0.01,
                        help="bounded: the fraction of each host's mirror candidates it mirrors")
    parser.add_argument("--placement", default="",
                        help="a placement file (embps partition): host h's shard owns its rows, trainer h its samples")
    parser.add_argument("--trainers", type=int, help="trainers, each with its gateway (default 2)")
    parser.add_argument("--shards", type=int, help="parameter shards (default 2)")
    parser.add_argument("--hosts", type=int, help="hosts on loopback, each running one shard and one trainer with "
                                                  "its gateway (so trainers = shards = hosts)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=1024, help="global batch size")
    parser.add_argument("--dim", type=int, default=None, help="embedding width (default 50 for caser, else 32)")
    parser.add_argument("--emb-optimizer", default="adagrad", choices=EMB_OPTIMIZERS,
                        help="the table's optimizer, run by the shards and the caches (adam: a step count per row)")
    parser.add_argument("--emb-lr", type=float, default=0.05)
    parser.add_argument("--emb-eps", type=float, default=JobConfig.emb_eps, help="adagrad's and adam's epsilon")
    parser.add_argument("--emb-betas", type=float, nargs=2, default=(JobConfig.emb_beta1, JobConfig.emb_beta2),
                        metavar=("BETA1", "BETA2"), help="adam's betas")
    parser.add_argument("--dense-lr", type=float, default=1e-3)
    parser.add_argument("--eval-batches", type=int, default=16,
                        help="held-out batches (a sequence data set's ranking queries are all evaluated)")
    parser.add_argument("--emb-info-file", help="the tables of Criteo-format data from Bagpipe's emb_table_info.txt "
                                                "(one table size per line)")
    parser.add_argument("--cache-size", type=int, default=0,
                        help="the caches' row budget (Bagpipe's --cache-size): the oracle refuses a window that "
                             "needs more rows, naming the lookahead that fits (default: none)")
    parser.add_argument("--external-trainers", metavar="COMMAND",
                        help="run COMMAND in place of the trainers (it starts them all, and finds the job through "
                             "EMBPS_JOB), e.g. a Bagpipe trainer script on embps.compat.bagpipe")


def counts_from_args(args) -> tuple[int, int]:
    """(trainers, shards): both default to 2; with --hosts both are the hosts, and must agree."""
    if args.hosts is None:
        return args.trainers or 2, args.shards or 2
    for flag, value in (("--trainers", args.trainers), ("--shards", args.shards)):
        if value not in (None, args.hosts):
            raise SystemExit(f"each host runs one shard and one trainer: {flag} {value} contradicts --hosts {args.hosts}")
    return args.hosts, args.hosts


def job_from_args(args) -> JobConfig:
    default_dataset, default_dim = MODEL_DEFAULTS.get(args.model, DEFAULTS)
    dataset = args.dataset or default_dataset
    options = {"scale": args.scale} if dataset == "synthetic" else {}
    if args.segments:
        if dataset != "synthetic":
            raise ValueError(f"--segments shapes the synthetic data, not {dataset}")
        options["segments"] = args.segments
    # The job file lives in --data-dir and its processes resolve a relative placement against it, so the
    # path the user typed (relative to here) goes into the file absolute.
    placement = str(Path(args.placement).resolve()) if args.placement else ""
    trainers, shards = counts_from_args(args)
    if placement:   # refused here, before any process starts (the job has no shard addresses yet)
        check_one_shard_per_trainer(trainers, shards, " (or give --hosts)")
    job = JobConfig(dataset=dataset, dataset_options=options, model=args.model, mode=args.mode,
                    trainers=trainers, global_batch=args.batch, steps=args.steps, dim=args.dim or default_dim,
                    eval_batches=args.eval_batches, emb_optimizer=args.emb_optimizer, emb_lr=args.emb_lr,
                    emb_eps=args.emb_eps, emb_beta1=args.emb_betas[0], emb_beta2=args.emb_betas[1], dense_lr=args.dense_lr, lookahead=args.lookahead,
                    staleness=args.staleness, store_rate=args.store_rate, placement=placement)
    return with_table_sizes(job, args.emb_info_file) if args.emb_info_file else job


def oracle_flags(args) -> tuple[str, ...]:
    return ("--cache-size", str(args.cache_size)) if args.cache_size else ()


def summarize(result) -> dict:
    m, job = result.metrics, result.job
    gateways = m["gateways"]
    used = sum(g.get("rows_used", 0) for g in gateways)
    fetched = sum(g.get("rows_fetched", 0) for g in gateways)
    steps = len(m["losses"])
    # Step time from the middle half of the run: start-up and the final write-back are not training.
    ends = m["step_end_seconds"]
    mid = ends[steps // 4: 3 * steps // 4 + 1]
    step_seconds = (mid[-1] - mid[0]) / max(len(mid) - 1, 1) if len(mid) > 1 else ends[-1] / steps
    return {
        "steps": steps,
        "step_seconds": step_seconds,
        "samples_per_second": job.global_batch / step_seconds,
        "cache_hit_rate": 1 - fetched / used if used and job.mode == "sync" else 0.0,
        "ps_bytes": sum(g.get("ps_bytes_in", 0) + g.get("ps_bytes_out", 0) for g in gateways),
        "final_loss": sum(m["losses"][-10:]) / len(m["losses"][-10:]),
        **{f"eval_{k}": v for k, v in m["eval"].items()},
    }


def plot(result, summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses, aucs = result.metrics["losses"], result.metrics["batch_aucs"]
    window = max(1, len(losses) // 30)

    def smooth(values):
        return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                for i in range(len(values))]

    names, values = ["AUC", "log-loss"], [summary["eval_auc"], summary["eval_logloss"]]
    for key, name in RANKING_FIGURES:
        if f"eval_{key}" in summary:
            names.append(name)
            values.append(summary[f"eval_{key}"])
    fig, (ax_loss, ax_auc, ax_eval) = plt.subplots(1, 3, figsize=(14 + len(names) / 2, 4),
                                                   gridspec_kw={"width_ratios": [3, 3, len(names) / 2]})
    ax_loss.plot(losses, alpha=0.3, label="global batch loss")
    ax_loss.plot(smooth(losses), label=f"moving mean ({window} steps)")
    ax_loss.set(xlabel="step", ylabel="log-loss (BCE)",
                title=f"{result.job.model} on {result.job.dataset}, {result.job.trainers} trainers, "
                      f"{result.job.mode} (L={result.job.lookahead})")
    ax_loss.legend()
    ax_auc.plot(aucs, alpha=0.3, label="AUC of each batch before its step")
    ax_auc.plot(smooth(aucs), label=f"moving mean ({window} steps)")
    ax_auc.axhline(summary["eval_auc"], color="C2", linestyle="dashed", label="held-out AUC at the end")
    ax_auc.set(xlabel="step", ylabel="AUC", title="AUC (trainer 0's slice of each batch)")
    ax_auc.legend()
    bars = ax_eval.bar(names, values, color=["C2", "C1", "C3", "C4"][:len(names)])
    ax_eval.bar_label(bars, fmt="%.3f")
    ax_eval.set(title="held-out", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    from embps.datasets import open_dataset
    from embps.models import MODELS, check_model_fits   # PyTorch loads only for the commands that train

    from .local_job import JobFailed, JobLayout, run_external_job, run_local_job
    if args.model not in MODELS:
        raise SystemExit(f"--model must be one of {MODELS}")
    console = Console()
    try:
        job = job_from_args(args)
    except (OSError, ValueError) as error:   # a bad table file, or settings a job cannot have
        raise SystemExit(f"embps train: {error}") from None
    try:
        check_model_fits(job.model, open_dataset(job.dataset, **job.dataset_options).info)
    except (OSError, ValueError) as error:
        raise SystemExit(f"embps train: --model {job.model} --dataset {job.dataset}: {error}") from None
    shards = counts_from_args(args)[1]
    layout = JobLayout.loopback_hosts(args.hosts) if args.hosts else JobLayout.loopback(shards, job.trainers)
    trainers = f"external trainers ({args.external_trainers})" if args.external_trainers else f"{job.trainers} trainers"
    where = f"{args.hosts} hosts (a shard, a gateway and a trainer each)" if args.hosts else \
        f"{shards} shards, {trainers}"
    console.print(f"[bold]embps train[/bold]: {job.model} on {job.dataset}, {where}, mode {job.mode}, lookahead "
                  f"{job.lookahead}, {job.steps} steps of {job.global_batch}")
    try:
        if args.external_trainers:
            result = run_external_job(job, Path(args.data_dir), shlex.split(args.external_trainers),
                                      n_shards=shards, oracle_flags=oracle_flags(args))
            return _report_external(console, result)
        result = run_local_job(job, Path(args.data_dir), layout=layout, oracle_flags=oracle_flags(args))
    except JobFailed as error:
        console.print(f"[bold red]training failed[/bold red]: {error}")
        return 1
    summary = summarize(result)
    png = result.out / "training.png"
    plot(result, summary, png)
    (result.out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table(title="training summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("held-out AUC", f"{summary['eval_auc']:.4f}")
    table.add_row("held-out log-loss", f"{summary['eval_logloss']:.4f}")
    for key, name in RANKING_FIGURES:
        if f"eval_{key}" in summary:
            table.add_row(f"held-out {name}", f"{summary[f'eval_{key}']:.4f}")
    table.add_row("final training loss", f"{summary['final_loss']:.4f}")
    table.add_row("throughput", f"{summary['samples_per_second']:,.0f} samples/s "
                                f"({summary['step_seconds'] * 1000:.1f} ms/step)")
    table.add_row("cache hit rate", f"{summary['cache_hit_rate']:.1%}")
    table.add_row("PS traffic", f"{summary['ps_bytes'] / 1e6:,.1f} MB")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    console.print(table)
    console.print(f"curves: {png}\nall processes stopped.")
    return 0


def _report_external(console: Console, result) -> int:
    """What the gateways saw of external trainers (their losses are theirs)."""
    table = Table(title="external trainers: the gateways' view")
    for column in ("gateway", "steps", "rows used", "rows fetched", "PS traffic"):
        table.add_column(column, justify="right")
    for i, g in enumerate(result.metrics["gateways"]):
        table.add_row(str(i), str(g["steps"]), f"{g.get('rows_used', 0):,}", f"{g.get('rows_fetched', 0):,}",
                      f"{(g.get('ps_bytes_in', 0) + g.get('ps_bytes_out', 0)) / 1e6:,.1f} MB")
    console.print(table)
    console.print(f"wall time {result.seconds:.1f} s; the rows are on the shards (under {result.out.parent}); "
                  "all processes stopped.")
    return 0
