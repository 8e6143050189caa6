"""Command line: `plan`, `run`, `status`, `retry`, `report`, `tasks` (also `python -m orchestrator`)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from orchestrator import cluster, logfile
from orchestrator.api import Connector
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.plan import SweepPlan, build_plan
from orchestrator.provenance import spec_hash
from orchestrator.registry import TaskDef, get_task, task_entries
from orchestrator.runner import RunOptions, run_sweep
from orchestrator.runs import canonical_json
from orchestrator.schema import is_failure
from orchestrator.spec import Resources, load_spec
from orchestrator.status import StageSummary, summarize
from orchestrator.store import SPECS, ResultStore
from orchestrator.tracking import TrackingOptions, parse_backends

app = typer.Typer(no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
# In a pipe, tables print at their natural width (full headers, no truncation); COLUMNS still wins.
out = Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=100_000)

SpecArg = Annotated[Path, typer.Argument(help="Sweep spec (YAML).", show_default=False)]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="Overrides: key.path=value or param=value.")]
ResultsOpt = Annotated[str | None, typer.Option("--results", help=escape(
    "Results root: a path or pyarrow.fs URI [env ORCHESTRATOR_RESULTS; spec `results:`; default ./results]."))]
AddressOpt = Annotated[str | None, typer.Option("--address", help=escape(
    "Ray cluster address [env RAY_ADDRESS; default: start a local Ray]."))]
CpusOpt = Annotated[float | None, typer.Option("--num-cpus", help="CPUs of a local Ray.")]
GpusOpt = Annotated[float | None, typer.Option("--num-gpus", help="(Logical) GPUs of a local Ray.")]
StageOpt = Annotated[list[str] | None, typer.Option("--stage", help="Only these stages (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into stages that hold another task's results "
                                        "(another spec with this sweep name).")]
BarrierOpt = Annotated[bool, typer.Option("--stage-barrier", help="Start each stage only once every stage "
                                          "before it has ended (default: a downstream run starts as soon as the "
                                          "upstream runs it reads are stored).")]
TrackOpt = Annotated[list[str] | None, typer.Option("--track", help="Log each stored run to an experiment tracker: "
                                                   "mlflow, tensorboard, wandb (repeatable or a comma list; adds "
                                                   "to the spec's `tracking: {backends: [...]}`).")]
TrackDirOpt = Annotated[str | None, typer.Option("--track-dir", help="Where TensorBoard and W&B files go "
                                                 "[<results>/<sweep>/tracking].")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also show Ray's logs, warnings and the "
                                          "workers' output here (always in <results>/<sweep>/logs/).")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="ray: Ray tasks and actors (local or a cluster); "
                                          "inline: every run in this process, one after another, no Ray "
                                          "(debugging with breakpoint()).")]


def _results_root(option: str | None, spec_results: str | None) -> str:
    root = option or os.environ.get("ORCHESTRATOR_RESULTS") or spec_results or "results"
    if "://" not in root and not os.path.isabs(root) and os.environ.get("RAY_JOB_ID"):
        console.print(f"[yellow]warning:[/] results root '{root}' is relative inside a Ray job: it lands in the "
                      "job's temporary working directory. Pass --results with an absolute path or URI.")
    return root


@dataclass
class Invocation:
    """What a command was given: the spec, its overrides and every option, to remember and to repeat."""

    spec: Path
    overrides: list[str] = field(default_factory=list)
    results: str | None = None
    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    stages: list[str] = field(default_factory=list)
    executor: str = "ray"
    force: bool = False
    verbose: bool = False
    track: list[str] = field(default_factory=list)
    track_dir: str | None = None
    stage_barrier: bool = False

    def command(self, name: str) -> str:
        """This invocation as the shell command `orchestrator <name> ...`, every given option repeated."""
        words = ["orchestrator", name, str(self.spec), *self.overrides]
        for option, value in (("--results", self.results), ("--address", self.address),
                              ("--num-cpus", self.num_cpus), ("--num-gpus", self.num_gpus)):
            if value is not None:
                words += [option, f"{value:g}" if isinstance(value, float) else str(value)]
        for stage in self.stages:
            words += ["--stage", stage]
        if self.executor != "ray":
            words += ["--executor", self.executor]
        for backend in self.track:
            words += ["--track", backend]
        if self.track_dir is not None:
            words += ["--track-dir", self.track_dir]
        flags = [flag for flag, given in (("--stage-barrier", self.stage_barrier), ("--force", self.force),
                                          ("-v", self.verbose)) if given]
        return shlex.join(words + flags)


def _load(call: Invocation, remembered: bool = False) -> tuple[SweepPlan, ResultStore]:
    """The command's one plan (spec loaded, expanded and validated once) and its store.

    `remembered` (status, report, retry): given no overrides, use those of the latest `run` of this spec
    file, if the file is unchanged since, and say so.
    """
    loaded = load_spec(call.spec, call.overrides)
    store = ResultStore(_results_root(call.results, loaded.spec.results), loaded.name)
    if remembered and not call.overrides:
        record = store.latest_spec()
        if record and record.get("overrides") and record.get("spec_file") == str(call.spec.resolve()):
            shown = " ".join(record["overrides"])
            if record.get("spec_sha") == spec_hash(call.spec.read_text()):
                console.print(f"using the overrides of the latest run ({shown}), saved in "
                              f"{store.base}/{SPECS}/{record['fingerprint']}.json", highlight=False)
                call.overrides = list(record["overrides"])
                loaded = load_spec(call.spec, call.overrides)
            else:
                console.print(f"[yellow]note:[/] {escape(str(call.spec))} changed since the latest run, whose "
                              f"overrides ({escape(shown)}) are not applied", highlight=False)
    return build_plan(loaded), store


def _remember(call: Invocation, sweep: SweepPlan, store: ResultStore) -> str:
    """Save the resolved spec (after overrides), its fingerprint and the command next to the results."""
    resolved = sweep.loaded.raw
    return store.remember_spec({
        "fingerprint": spec_hash(canonical_json(resolved)),
        "spec_file": str(call.spec.resolve()),
        "spec_sha": spec_hash(call.spec.read_text()),
        "overrides": call.overrides,
        "command": call.command("run"),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resolved": resolved,
    })


def _nodes_for(address: str | None, num_cpus: float | None, num_gpus: float | None,
               needs: list[Resources]) -> list[cluster.NodeInfo]:
    """The nodes runs needing `needs` would be checked against: the cluster at `address` (attached, then
    detached), or what a local Ray with these options would have ([]: nothing to check)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        if num_cpus is None and all(cluster.fits_any_local_ray(resources) for resources in needs):
            return []  # skips Ray's resource detection, which imports Ray (half a second)
        return cluster.local_nodes(num_cpus, num_gpus)
    started = cluster.connect(address, num_cpus, num_gpus)
    try:
        return cluster.alive_nodes()
    finally:
        if started:
            cluster.shutdown()


def _fail(exc: OrchestratorError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _summary_table(title: str, summaries: list[StageSummary]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("stage", "task", "resources/run", "runs", "done", "failed", "to run", "note"):
        table.add_column(column, justify="right" if column in ("runs", "done", "failed", "to run") else "left")
    for s in summaries:
        note = s.note
        if s.stored_not_in_spec:
            note = (note + "; " if note else "") + f"{s.stored_not_in_spec} stored runs no longer in the spec (kept)"
        table.add_row(s.name, s.task, s.resources, "?" if s.total is None else str(s.total), str(s.ok),
                      str(s.failed), "?" if s.to_run is None else str(s.to_run), note)
    return table


@app.command()
def plan(spec: SpecArg, overrides: OverridesArg = None, results: ResultsOpt = None, address: AddressOpt = None,
         num_cpus: CpusOpt = None, num_gpus: GpusOpt = None) -> None:
    """Dry run: validate the spec and show, per stage, the runs, resources and how many are done.

    Starts no Ray: resources are checked against what a local Ray would have (or, with --address, against
    the cluster's nodes), with the message `run` gives.
    """
    try:
        sweep, store = _load(Invocation(spec, overrides or [], results))
        nodes = _nodes_for(address, num_cpus, num_gpus, [sweep.stages[name].resources for name in sweep.order])
        for name in sweep.order:
            cluster.check_feasible(name, sweep.stages[name].resources, nodes)
        summaries = summarize(sweep, store)
    except OrchestratorError as exc:
        _fail(exc)
    out.print(_summary_table(f"plan: {sweep.name} -> {store.base}", summaries))


@app.command()
def status(spec: SpecArg, overrides: OverridesArg = None, results: ResultsOpt = None) -> None:
    """Per stage: done, failed and still to run, with the latest failures.

    Without overrides, uses those of the latest `run` of this spec (it says so).
    """
    call = Invocation(spec, overrides or [], results)
    try:
        sweep, store = _load(call, remembered=True)
        summaries = summarize(sweep, store)
    except OrchestratorError as exc:
        _fail(exc)
    out.print(_summary_table(f"status: {sweep.name}", summaries))
    _print_failures(call, store, [s.name for s in summaries if s.failed])


def _print_failures(call: Invocation, store: ResultStore, stages: list[str], limit: int = 5) -> None:
    for name in stages:
        table = store.read_stage(name, columns=["status", "error_type", "error"])
        failed = [r for r in table.to_pylist() if is_failure(r.get("status"))]
        out.print(f"[red]{len(failed)} failed run(s) in stage {name}[/] (latest attempt), e.g.:")
        for row in failed[:limit]:
            out.print(escape(f"  {row['run_id']} [{row.get('error_type')}] {str(row.get('error'))[:200]}"),
                      highlight=False)
        out.print(f"  re-run them with: {escape(call.command('retry'))}", highlight=False, soft_wrap=True)


class RichProgress:
    """One bar per stage: done / total, failures, elapsed and ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"), TextColumn("[yellow]{task.fields[pruned]} pruned"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.ids: dict[str, TaskID] = {}
        self.failed: dict[str, int] = {}
        self.pruned: dict[str, int] = {}

    def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None:
        if already_done:
            console.print(f"{stage}: {already_done} of {total} runs already stored, {to_run} to run")
        if not to_run:
            return
        if not self.ids:
            self.progress.start()
        self.failed[stage] = 0
        self.pruned[stage] = 0
        self.ids[stage] = self.progress.add_task(stage, total=to_run, failed=0, pruned=0)

    def advance(self, stage: str, ok: int, failed: int, pruned: int = 0) -> None:
        if stage not in self.ids:
            return
        self.failed[stage] += failed
        self.pruned[stage] += pruned
        self.progress.update(self.ids[stage], advance=ok + failed + pruned, failed=self.failed[stage],
                             pruned=self.pruned[stage])

    def stage_finished(self, stage: str) -> None:
        self.progress.refresh()

    def note(self, text: str) -> None:
        self.progress.console.print(f"[yellow]note:[/] {escape(text)}")

    def close(self) -> None:
        if self.ids:
            self.progress.stop()


def _execute(call: Invocation, retry: bool) -> None:
    connector: Connector | None = None
    progress = RichProgress()
    stopped_by: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)
        raise KeyboardInterrupt  # the same clean stop as Ctrl-C: stored rows flushed, Ray shut down

    signal.signal(signal.SIGTERM, stop)
    try:
        tracking = _tracking(call)  # an unknown --track is refused before anything is saved
        sweep, store = _load(call, remembered=retry)
        unknown = [s for s in call.stages if s not in sweep.stages]
        if unknown:
            raise UsageError(f"--stage {unknown[0]}: no such stage (stages: {', '.join(sweep.order)})")
        _remember(call, sweep, store)
        log = logfile.start(store.log_dir(), "retry" if retry else "run", call.verbose)
        clock = time.perf_counter()
        connector = Connector(sweep, call.executor, call.address, call.num_cpus, call.num_gpus, call.stages or None)
        options = RunOptions(retry=retry, stages=call.stages or None, force=call.force, tracking=tracking,
                             stage_barrier=call.stage_barrier)
        outcomes = run_sweep(sweep, store, connector, options, progress)
        progress.close()
        executed = sum(o.executed for o in outcomes)
        failed_now = sum(o.failed for o in outcomes)
        console.print(f"{sweep.name}: executed {executed} runs ({failed_now} failed) in "
                      f"{time.perf_counter() - clock:.1f}s; results in {store.base}", highlight=False)
        if log.stat().st_size:
            console.print(f"warnings and library logs: {log}", highlight=False)
        summaries = summarize(sweep, store)
    except OrchestratorError as exc:
        progress.close()
        _fail(exc)
    except KeyboardInterrupt:
        progress.close()
        how = "terminated" if stopped_by else "interrupted"
        console.print(f"[yellow]{how}:[/] finished runs are stored; run the same command to resume")
        raise typer.Exit(143 if stopped_by else 130) from None
    finally:
        if connector is not None:
            connector.close()
        logfile.stop()
    failing = [s.name for s in summaries if s.failed]
    if failing:
        _print_failures(call, store, failing)
        raise typer.Exit(1)


@app.command()
def run(spec: SpecArg, overrides: OverridesArg = None, results: ResultsOpt = None, address: AddressOpt = None,
        num_cpus: CpusOpt = None, num_gpus: GpusOpt = None, stage: StageOpt = None,
        executor: ExecutorOpt = "ray", force: ForceOpt = False, verbose: VerboseOpt = False, track: TrackOpt = None,
        track_dir: TrackDirOpt = None, stage_barrier: BarrierOpt = False) -> None:
    """Run every run not yet stored. Safe to stop and re-run: finished runs are never recomputed.

    Saves the resolved spec (after overrides) under <results>/<sweep>/specs/.
    """
    _execute(Invocation(spec, overrides or [], results, address, num_cpus, num_gpus, stage or [], executor, force,
                        verbose, track or [], track_dir, stage_barrier), retry=False)


@app.command()
def retry(spec: SpecArg, overrides: OverridesArg = None, results: ResultsOpt = None, address: AddressOpt = None,
          num_cpus: CpusOpt = None, num_gpus: GpusOpt = None, stage: StageOpt = None,
          executor: ExecutorOpt = "ray", force: ForceOpt = False, verbose: VerboseOpt = False,
          track: TrackOpt = None, track_dir: TrackDirOpt = None, stage_barrier: BarrierOpt = False) -> None:
    """Re-run the runs whose latest attempt failed (and any not yet run); earlier attempts stay as history.

    Without overrides, uses those of the latest `run` of this spec (it says so).
    """
    _execute(Invocation(spec, overrides or [], results, address, num_cpus, num_gpus, stage or [], executor, force,
                        verbose, track or [], track_dir, stage_barrier), retry=True)


def _tracking(call: Invocation) -> TrackingOptions:
    """The command's --track and --track-dir (the spec's `tracking:` block is added by the runner)."""
    return TrackingOptions(parse_backends(call.track), call.track_dir)


@app.command("export")
def export_command(
    spec: SpecArg,
    to: Annotated[list[str], typer.Option("--to", help="mlflow, tensorboard, wandb (repeatable or a comma list).",
                                          show_default=False)],
    overrides: OverridesArg = None,
    results: ResultsOpt = None,
    stage: StageOpt = None,
    track_dir: TrackDirOpt = None,
) -> None:
    """Log the runs already stored to experiment trackers; runs a tracker already holds are not logged twice."""
    from orchestrator.tracking import export

    try:
        sweep, store = _load(Invocation(spec, overrides or [], results, stages=stage or []))
        unknown = [s for s in stage or [] if s not in sweep.stages]
        if unknown:
            raise UsageError(f"--stage {unknown[0]}: no such stage (stages: {', '.join(sweep.order)})")
        options = TrackingOptions(parse_backends(to, "--to"), track_dir or sweep.loaded.spec.tracking.dir,
                                  sweep.loaded.spec.tracking.experiment)
        done = export(sweep, store, options, stage)
    except OrchestratorError as exc:
        _fail(exc)
    for backend in options.backends:
        console.print(f"{backend}: logged {done.logged.get(backend, 0)} runs, {done.skipped.get(backend, 0)} "
                      "already there")


@app.command("slurm")
def slurm_command(
    spec: SpecArg,
    cpus_per_node: Annotated[int, typer.Option("--cpus-per-node", min=1, help="CPUs per node (Ray's --num-cpus).")],
    mem: Annotated[str, typer.Option("--mem", help="Memory per node, as sbatch --mem: 64G, 500M.")],
    time_limit: Annotated[str, typer.Option("--time", help="Time limit per job, as sbatch --time: 4:00:00.")],
    overrides: OverridesArg = None,
    results: ResultsOpt = None,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Nodes: Ray head on the first, workers on others.")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", min=0, help="GPUs per node.")] = 0,
    partition: Annotated[str | None, typer.Option("--partition", help="sbatch --partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="sbatch --account.")] = None,
    constraint: Annotated[str | None, typer.Option("--constraint", help="sbatch --constraint.")] = None,
    python: Annotated[str | None, typer.Option("--python", help="Python the job runs, with orchestrator and ray "
                                                  "installed (default: the one running this command).")] = None,
    array: Annotated[int, typer.Option("--array", min=1, help="Submit K jobs, each resuming after the previous "
                                       "ends: sweeps longer than the time limit. Needs --submit.")] = 1,
    submit: Annotated[bool, typer.Option("--submit", help="Submit with sbatch and print the job id(s).")] = False,
) -> None:
    """Print an sbatch script that starts Ray on a Slurm allocation and runs the sweep on it (--submit: submit it)."""
    from orchestrator import slurm

    try:
        loaded = load_spec(spec, overrides or [])
        root = slurm.shared_root(_results_root(results, loaded.spec.results))
        build_plan(loaded)  # every parameter checked before the job waits in the queue
        interpreter = os.path.abspath(python or sys.executable)
        slurm.check_ray(interpreter)
        script = slurm.sbatch_script(slurm.SlurmJob(
            spec=os.path.abspath(spec), results=root, python=interpreter, workdir=os.getcwd(),
            job_name=loaded.name, cpus_per_node=cpus_per_node, mem=mem, time=time_limit,
            overrides=tuple(overrides or ()), nodes=nodes, gpus_per_node=gpus_per_node, partition=partition,
            account=account, constraint=constraint,
        ))
        if not submit:
            if array > 1:
                raise slurm.SlurmError("--array submits a chain of jobs: add --submit (without it, one script prints)")
            sys.stdout.write(script)
            return
        ids = slurm.submit(script, jobs=array)
    except OrchestratorError as exc:
        _fail(exc)
    console.print(f"submitted {len(ids)} job(s)" + (", each starting after the previous ends" if len(ids) > 1 else ""))
    print("\n".join(ids))


@app.command()
def report(spec: SpecArg, overrides: OverridesArg = None, results: ResultsOpt = None,
           out_dir: Annotated[Path | None, typer.Option("--out", help=escape(
               "Where figures go [default <results>/<sweep>/report]."))] = None) -> None:
    """Summary table per stage (metric means over the swept parameters) and each family's figures.

    Without overrides, uses those of the latest `run` of this spec (it says so).
    """
    try:
        sweep, store = _load(Invocation(spec, overrides or [], results), remembered=True)
    except OrchestratorError as exc:
        _fail(exc)
    from orchestrator.report import stage_report  # pandas and matplotlib: only the report command pays for them

    target = out_dir or store.report_dir()
    logfile.start(store.log_dir(), "report")
    try:
        for name in sweep.order:
            for item in stage_report(sweep, store, name, target):
                out.print(item)
    finally:
        logfile.stop()


@app.command("tasks")
def list_tasks(name: Annotated[str | None, typer.Argument(help="A task name or module:function: show its "
                                                          "parameters and setup.", show_default=False)] = None
               ) -> None:
    """List registered tasks (without importing them), or show one task's parameters."""
    try:
        if name is not None:
            _show_task(get_task(name))
            return
        entries = task_entries()
    except OrchestratorError as exc:
        _fail(exc)
    table = Table("task", "defined in", "registered by")
    for task_name, entry in sorted(entries.items()):
        table.add_row(task_name, entry.target, entry.origin)
    out.print(table)


def _show_task(task: TaskDef) -> None:
    """A task's one-line doc, version, setup and resources, and a table of its parameters."""
    out.print(f"[bold]{task.name}[/] (version {task.version}): {escape(task.doc)}", highlight=False)
    out.print(f"  defined in {task.target}", highlight=False)
    if task.setup is not None:
        keys = ", ".join(task.setup_keys) or "none: one setup per worker"
        out.print(f"  setup {task.setup.__name__}, reused across runs that share: {keys}", highlight=False)
    if task.resources:
        out.print(f"  default resources: {task.resources}", highlight=False)
    fields = task.params.model_fields
    described = any(info.description for info in fields.values())
    table = Table("parameter", "type", "default", "constraints", *(["description"] if described else []))
    for field_name, info in fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        cells = [field_name, _type_name(info.annotation), default, ", ".join(_constraint(c) for c in info.metadata)]
        table.add_row(*[escape(c) for c in cells + ([info.description or ""] if described else [])])
    out.print(table)


def _type_name(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _constraint(item: object) -> str:
    """`Gt(gt=0)` -> `> 0`; other annotated metadata as pydantic prints it."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "multiple_of": "multiple of",
               "min_length": "min length", "max_length": "max length", "pattern": "matches"}
    for attr, symbol in symbols.items():
        value = getattr(item, attr, None)
        if value is not None:
            return f"{symbol} {value}"
    return repr(item)


@app.command("job-env")
def job_env() -> None:
    """Print the runtime env for `ray job submit --runtime-env-json`: this checkout's commit (and whether it
    has changes) for the rows, and .venv/, results/ and .git/ left out of the upload."""
    import json

    from orchestrator.provenance import job_runtime_env

    print(json.dumps(job_runtime_env(os.getcwd())))


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        print(f"orchestrator (interp-sweeps) {metadata.version('interp-sweeps')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Declarative sweeps for interpretability research on Ray: plan, run, status, retry, report."""


def main() -> None:
    try:
        app()
    except OrchestratorError as exc:  # errors raised outside a command body
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
