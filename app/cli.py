"""The ``fl-sim`` command line.

User errors (bad config, missing data, unknown message) print one line and exit
with status 2; nothing is written before the input is known to be good.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adversary.attacks import AUDIT_PRESET, PRESETS, audit_preset
from adversary.attacks import ConfigError as AttackConfigError
from adversary.evaluation import GrantError
from adversary.job import AuditStatement
from adversary.jobs import JobBook
from adversary.observation import ObservationError, client_updates
from adversary.roles import AttackTarget, RoleError
from adversary.roles.base import check_decoders, positive_count
from adversary.service import execute_job, role_faults, role_process_note
from adversary.traffic_log import TrafficLog, TrafficLogError
from adversary.traffic_stats import round_metrics
from app.audit import AuditError, load_app_spec, run_audit
from app.audit.app_log import APP_LOG
from app.audit.run_config import parse_run_config
from app.netguard import apply_offline_env
from app.report import ReportError, report_run
from app.simulation import run_simulation
from experiments.registry import ExperimentError, list_experiments
from experiments.runner import report_experiment, run_experiment
from experiments.tables import to_markdown
from fl_sim.config import AdversaryConfig, ConfigError, TapConfig, apply_override, load_config
from fl_sim.data import DataError
from fl_sim.deployment import DeploymentCardError
from fl_sim.devices import DEVICE_CHOICES, DeviceError, resolve_device
from fl_sim.ground_truth import GroundTruthError
from fl_sim.models import ModelError
from fl_sim.rundir import read_summary
from fl_sim.safe_paths import output_folder_problem
from fl_sim.threat import ThreatModelError
from fl_sim.validation import one_line

EXIT_USAGE = 2
CLI_ROLE = "cli"  # the job book's role name for attacks asked for on the command line
CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIGS / "default.toml"  # fl-sim run without --config: a plain run, no adversary
DEMO_CONFIG = CONFIGS / "demo.toml"  # fl-sim demo, the main job: an eavesdropper attacking while it trains


class UserError(Exception):
    """Anything the user can fix; shown as one line."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, like every other error: what is wrong and where the help is (the full
    usage of ``attack`` alone is ten lines that bury the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cmd_demo(args: argparse.Namespace, console: Console) -> None:
    args.config = str(DEMO_CONFIG)
    _cmd_run(args, console)


def _cmd_run(args: argparse.Namespace, console: Console) -> None:
    config = load_config(args.config or DEFAULT_CONFIG, args.set or [])
    outcome = run_simulation(config, command=sys.argv)
    last = outcome.result.rounds[-1]
    console.print(
        f"\n[bold]done[/bold]: {len(outcome.result.rounds)} rounds on {config.federation.num_clients} clients"
        f" ({config.engine.name} engine) in {outcome.wall_s:.1f} s; final accuracy {last.eval_acc:.2%}"
    )
    console.print(f"run directory: {outcome.run_dir}")
    vetting = read_summary(outcome.run_dir).get("vetting")
    if vetting:
        console.print(f"vetting: flagged {vetting['detected']} of {vetting['manipulated_replies']} replies to manipulated "
                      f"rounds, {vetting['false_alarms']} of {vetting['honest_replies']} honest ones")
    if config.tap.enabled:
        console.print(f"intercepted traffic: fl-sim traffic list {outcome.run_dir}")
    _write_report(console, outcome.run_dir)


def _write_report(console: Console, run_dir: Path) -> None:
    try:
        path, lines = report_run(run_dir)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    for line in lines:
        console.print(line, highlight=False)
    console.print(f"report: {path}", highlight=False)


def _cmd_report(args: argparse.Namespace, console: Console) -> None:
    _write_report(console, Path(args.run_dir))


def _short_metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        name = key.rsplit("/", 1)[-1]
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def _cmd_traffic_list(args: argparse.Namespace, console: Console) -> None:
    with TrafficLog.open(args.run_dir) as log:
        msgs = log.messages(round=args.round, client=args.client, direction=args.direction)
    table = Table(title=f"{len(msgs)} intercepted messages")
    for col in ("id", "round", "dir", "client node", "type", "tensors", "bytes", "metrics"):
        right = col in ("id", "round", "tensors", "bytes")
        table.add_column(col, justify="right" if right else "left", no_wrap=col != "metrics")
    for m in msgs:
        table.add_row(
            str(m.id), str(m.round), m.direction, str(m.client_node), m.message_type, str(len(m.tensors)),
            f"{m.num_bytes:,}", _short_metrics(m.metrics) or (f"error: {m.error}" if m.error else ""),
        )
    console.print(table)


def _cmd_traffic_show(args: argparse.Namespace, console: Console) -> None:
    with TrafficLog.open(args.run_dir) as log:
        m = log.message(args.msg_id)
        arrays = log.arrays(args.msg_id)  # a damaged or missing tensor file is said here, not at export time
    console.print(f"[bold]message {m.id}[/bold]  round {m.round}  {m.direction}  {m.message_type}")
    console.print(f"from node {m.src_node} to node {m.dst_node}; {m.num_bytes:,} bytes; sha256 {m.sha256}")
    if m.reply_to:
        console.print(f"reply to {m.reply_to}")
    if m.error:
        console.print(f"[red]error[/red]: {m.error}")
    for title, values in (("metrics", m.metrics), ("config", m.config)):
        if values:
            console.print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    table = Table(title="tensors")
    for col in ("name", "shape", "dtype", "L2 norm"):
        table.add_column(col)
    for t in m.tensors:
        table.add_row(t.name, "x".join(map(str, t.shape)) or "scalar", t.dtype, f"{t.l2:.6g}")
    console.print(table)
    if arrays:
        console.print(f"tensor file: {len(arrays)} tensors, read and checked against the index", highlight=False)


def _cmd_traffic_export(args: argparse.Namespace, console: Console) -> None:
    target = Path(args.out)
    problem = output_folder_problem(target.parent) or (f"{target} is a folder; name the file to write" if target.is_dir() else None)
    if problem:
        raise UserError(f"--out: {problem}")
    with TrafficLog.open(args.run_dir) as log:
        out = log.export(args.msg_id, args.out)
    console.print(f"wrote {out}")


def _input_shape(text: str | None) -> tuple[int, int, int]:
    try:
        shape = [int(v) for v in (text or "").split(",")]
    except ValueError:
        shape = []
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input-shape: expected C,H,W such as 1,28,28, got {text!r}")
    return (shape[0], shape[1], shape[2])


def _floats(option: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values:
        raise UserError(f"{option}: expected one value or one per channel, such as 0.5 or 0.485,0.456,0.406; got {text!r}")
    return values


def _statement(args: argparse.Namespace, root: str | None = None) -> AuditStatement:
    """What the command line states about an audited app (``fl-sim audit`` and ``fl-sim attack`` alike)."""
    if args.input_shape and not args.model:
        raise UserError("--model: --input-shape describes the app's model; name it with --model module:factory")
    try:
        recipe = parse_run_config(args.recipe, option="--recipe")
    except AuditError as exc:
        raise UserError(str(exc)) from None
    return AuditStatement(
        factory=args.model or None,
        input_shape=_input_shape(args.input_shape) if args.input_shape else None,
        mean=_floats("--input-mean", args.input_mean),
        std=_floats("--input-std", args.input_std),
        transform=args.input_transform or None,
        update_kind=getattr(args, "update_kind", None) or None,
        recipe=recipe,
        client_data=getattr(args, "client_data", None) or None,
        root=root,
        trust_run=bool(getattr(args, "trust_run", False)),
    )


def _cmd_audit(args: argparse.Namespace, console: Console) -> None:
    problem = output_folder_problem(Path(args.out or "runs"))
    if problem:
        raise UserError(f"--out: {problem}")
    try:
        spec = load_app_spec(args.app, args.clientapp)
        statement = _statement(args, str(spec.root) if spec.root else None)
        adversary = None
        sets = _set_sections(args.set or [], ("attack", "threat", "tap"))
        attack, threat = sets["attack"], sets["threat"]
        tap = _audit_tap(sets["tap"])
        if (attack or threat) and not args.role:
            raise UserError("--set: attack.<key> and threat.<key> are for --role (the attack run while the app runs)")
        if args.role:
            adversary = AdversaryConfig(role=args.role, preset=args.preset or audit_preset(str(statement.recipe.get("optimizer", "sgd"))),
                                        attack=attack, threat=threat)
            if not statement.factory:
                raise UserError("--model: a role needs the app's model (module:factory) and --input-shape to attack")
        outcome = run_audit(
            spec,
            overrides=parse_run_config(args.run_config),
            num_supernodes=args.num_supernodes,
            engine=args.engine,
            seed=args.seed,
            out_dir=args.out or "runs",
            command=sys.argv,
            statement=statement,
            adversary=adversary,
            tap=tap,
        )
    except (AuditError, DeploymentCardError, ObservationError) as exc:
        raise UserError(str(exc)) from None
    console.print(f"\n[bold]audit done[/bold]: {outcome.messages} messages intercepted in {outcome.wall_s:.1f} s")
    with TrafficLog.open(outcome.run_dir) as log:
        rows = round_metrics(log.messages())
    for rnd, kind, replies, means in rows:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in means.items()) or "no metrics"
        console.print(f"  round {rnd} {kind}: {replies} replies; mean {shown}")
    for line in ([note] if (note := role_process_note(outcome.run_dir)) else []) + role_faults(outcome.run_dir):
        console.print(f"adversary: {line}", highlight=False, soft_wrap=True)
    console.print(f"run directory: {outcome.run_dir}")
    console.print(f"the app's own output: {outcome.run_dir / APP_LOG}")
    console.print(f"intercepted traffic: fl-sim traffic list {outcome.run_dir}")


def _set_sections(assignments: list[str], sections: tuple[str, ...] = ("attack", "threat")) -> dict[str, dict]:
    """``--set`` assignments by section, each section one of ``sections``."""
    tree: dict = {}
    for assignment in assignments:
        apply_override(tree, assignment)
    unknown = set(tree) - set(sections)
    if unknown:
        raise UserError(f"--set: {sorted(unknown)[0]}: unknown section; use " + " or ".join(f"{s}.<key>" for s in sections))
    return {section: tree.get(section, {}) for section in sections}


def _attack_overrides(assignments: list[str]) -> tuple[dict, dict]:
    sets = _set_sections(assignments)
    return sets["attack"], sets["threat"]


AUDIT_TAP_KEYS = ("keep_directions", "keep_rounds", "keep_every", "keep_message_types", "keep_clients", "spool_rounds")


def _audit_tap(keys: dict) -> TapConfig | None:
    """An audit's tap policy (``--set tap.keep_*``, ``tap.spool_rounds``); None keeps everything. The audit
    is the tap, so it cannot be turned off, and an audited app has no ground truth to keep."""
    if not keys:
        return None
    for key in keys:
        if key not in AUDIT_TAP_KEYS:
            raise UserError(f"--set: tap.{key}: not an audit's tap setting; use one of " + ", ".join(f"tap.{k}" for k in AUDIT_TAP_KEYS))
    try:
        tap = TapConfig.model_validate(keys)
    except ValidationError as exc:
        raise UserError(one_line(exc, "tap")) from None
    return None if tap.keeps_everything else tap


def _round_range(text: str) -> tuple[int, int]:
    """``A-B`` (or one round ``A``) as an inclusive range; one line naming --rounds otherwise."""
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise UserError(f"--rounds: expected A-B (server rounds, e.g. 1-20) or one round, got {text!r}") from None
    if low < 0 or high < low:
        raise UserError(f"--rounds: expected A-B with 0 <= A <= B, got {text!r}")
    return low, high


def _decode_target(args: argparse.Namespace, log: TrafficLog) -> AttackTarget:
    """One client's updates over --rounds, to invert and decode (--decode)."""
    try:
        decoders = check_decoders("--decode", args.decode)
        epochs = positive_count("--epochs", args.epochs)
        private_images = positive_count("--private-images", args.private_images)
    except RoleError as exc:
        raise UserError(str(exc)) from None
    if args.client is None:
        raise UserError("--client: give the node id whose updates to decode (see fl-sim traffic list)")
    if args.rounds is None:
        raise UserError("--rounds: give the rounds whose updates to gather, A-B (T epochs of the client's updates)")
    low, high = _round_range(args.rounds)
    updates = [m for m in client_updates(log, client=args.client) if m.round is not None and low <= m.round <= high]
    if not updates:
        raise UserError(f"--rounds/--client: no captured update of node {args.client} in rounds {low}-{high}")
    return AttackTarget("decode", high, tuple(m.id for m in updates), client=args.client, decode=decoders, epochs=epochs,
                        private_images=private_images)


def _attack_targets(args: argparse.Namespace) -> list[AttackTarget]:
    with TrafficLog.open(args.run_dir) as log:
        if args.decode is not None:
            return [_decode_target(args, log)]
        if args.rounds is not None or args.epochs is not None or args.private_images is not None:
            raise UserError("--decode: --rounds, --epochs and --private-images are for decoding (--decode keyless|keys)")
        if args.msg is not None:
            return [AttackTarget("update", None, (args.msg,))]
        if args.round is None:
            raise UserError("--round: give the round to attack (or --msg MSG_ID)")
        updates = client_updates(log, round=args.round, client=None if args.all else args.client)
        if not args.all and args.client is None:
            raise UserError("--client: give the client node id to attack, or --all for every client of the round")
    if not updates:
        raise UserError(f"--round/--client: no captured client update matches (round {args.round}, client {args.client})")
    return [AttackTarget("update", None, (m.id,)) for m in updates]


def _resume_attacks(args: argparse.Namespace, console: Console) -> int:
    """Run the attacks a run's adversary (or an earlier ``fl-sim attack``) scheduled but did not finish."""
    if not JobBook.exists(args.run_dir):
        raise UserError(f"RUN_DIR: {args.run_dir} has no adversary job book (no role and no fl-sim attack ran on it)")
    book = JobBook(args.run_dir)
    try:
        todo = [j.id for j in book.jobs(("pending", "running"))]
    finally:
        book.close()
    console.print(f"{len(todo)} unfinished attacks")
    statement = _statement(args, args.app_root)
    failed = 0
    for job_id in todo:
        result = execute_job(str(args.run_dir), job_id, audit=statement, device=args.device)
        failed += result["state"] == "failed"
        console.print(f"job {job_id}: {_job_state(result)}" + (f"  outputs: {result['out_dir']}" if result.get("out_dir") else ""),
                      highlight=False)
    return 1 if failed else 0


def _job_state(result: dict) -> str:
    state = result["state"]
    if state == "elsewhere":
        return "running in another process (left to it)"
    if state == "failed":
        return f"failed: {result.get('error')}"
    return state + (" before" if result.get("before") else "")


# What a command line's own request can get wrong: said in one line, and the job it asked for is forgotten.
REFUSED = (AttackConfigError, ThreatModelError, GrantError, TrafficLogError, GroundTruthError, ObservationError,
           DeploymentCardError, KeyError)


def _cli_job(args: argparse.Namespace, target: AttackTarget, attack_overrides: dict, threat: dict, statement: AuditStatement) -> int:
    """The job book's entry for this command's attack on ``target``: the same request (preset, --set and
    every statement about the app: model, recipe, data) finds the same job (done: skipped; killed:
    resumable with --resume; failed: tried again); any other request is a job of its own."""
    preset = args.preset or ""  # none named: the attack's default for the run (the book's column is text)
    request = [attack_overrides, threat, dataclasses.asdict(statement)]
    variant = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:12]
    book = JobBook(args.run_dir)
    try:
        job_id = book.add(CLI_ROLE, target, preset, attack_overrides, threat, variant=variant)
        if job_id is None:
            job_id = book.find(CLI_ROLE, target, preset, variant=variant)
            book.retry(job_id)
        return job_id
    finally:
        book.close()


def _cmd_attack(args: argparse.Namespace, console: Console) -> int:
    try:
        resolve_device(args.device, "--device")
    except DeviceError as exc:
        raise UserError(str(exc)) from None
    if args.resume:
        return _resume_attacks(args, console)
    attack_overrides, threat = _attack_overrides(args.set or [])
    statement = _statement(args, args.app_root)
    targets = _attack_targets(args)
    terminal = console.is_terminal
    failed = 0
    had_book = JobBook.exists(args.run_dir)
    for target in targets:
        msg_id = target.messages[0]
        what = f"decode node {target.client} ({len(target.messages)} updates)" if target.kind == "decode" else f"msg {msg_id}"
        job_id = _cli_job(args, target, attack_overrides, threat, statement)
        with Progress(TextColumn(f"attack {what}"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.description}"),
                      TimeElapsedColumn(), console=console, transient=True, disable=not terminal) as progress:
            bar = progress.add_task("-", total=None)

            def update(iteration: int, loss: float) -> None:
                progress.update(bar, completed=iteration + 1, description=f"{loss:.4g}")

            def warn(text: str) -> None:
                console.print(f"[bold red]warning[/bold red]: {what}: {text}", highlight=False)

            try:
                result = execute_job(str(args.run_dir), job_id, audit=statement, raise_refused=REFUSED, progress=update, warn=warn,
                                     echo=None if terminal else sys.stderr, device=args.device)
            except REFUSED as exc:
                if not had_book:
                    JobBook.remove_if_empty(args.run_dir)  # a refused request leaves nothing behind
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                raise UserError(str(message)) from None
        if result["state"] == "done":
            if result.get("before"):
                console.print(f"{what}: attacked before with these settings (job {job_id}); not run again", highlight=False)
            if target.kind == "decode":
                _print_decode(console, result["metrics"])
            else:
                _print_attack(console, msg_id, result["metrics"])
            console.print(f"  outputs: {result['out_dir']}")
        else:
            failed += result["state"] == "failed"
            console.print(f"{what} (job {job_id}): {_job_state(result)}", highlight=False)
    return 1 if failed else 0


def _print_decode(console: Console, m: dict) -> None:
    """One line per decoder: what it claims, how it scores, and the floor it must beat."""
    rounds = m.get("rounds") or [None, None]
    console.print(f"node {m.get('client_node')}: {m.get('updates')} updates (rounds {rounds[0]}-{rounds[1]}) inverted "
                  f"({m.get('method')}), {m.get('encodings')} encodings decoded", highlight=False)
    for decoder, d in (m.get("decoders") or {}).items():
        line = f"  {decoder}: {d.get('identifiable')} images decoded"
        if d.get("private_images_used") is not None:
            line += f" (looked for {d['private_images_used']})"
        if d.get("lpips_avg") is not None:
            line += (f"; of the {d.get('num_images')} private images: LPIPS avg {d['lpips_avg']:.3f} best {d['lpips_best']:.3f}, "
                     f"PSNR avg {d['psnr_avg']:.2f} dB, {d.get('exact_recovered')} exact")
        if d.get("verdict_counts"):
            line += "; verdict " + ", ".join(f"{n} {level}" for level, n in d["verdict_counts"].items() if n)
        console.print(line, highlight=False)
        console.print(f"    outputs: attacks/{d.get('folder')}", highlight=False)
    floor = m.get("encodings_as_candidates")
    if floor:
        console.print(f"  the inverted encodings themselves as candidates: LPIPS avg {floor['lpips_avg']:.3f} "
                      "(a decoder above this has added nothing)", highlight=False)


def _print_attack(console: Console, msg_id: int, m: dict) -> None:
    line = f"msg {msg_id} (round {m['round']}): objective {m['objective']:.4g}"
    if "recipe_error" in m:
        line += f"  recipe error {m['recipe_error']:.2g}" + ("" if m.get("recipe_ok") else " (WRONG RECIPE)")
    if "nearest_lpips_avg" in m:
        line += f"  nearest-image LPIPS avg {m['nearest_lpips_avg']:.3f} best {m['nearest_lpips_best']:.3f}"
    if "lpips_avg" in m:
        line += f"  LPIPS avg {m['lpips_avg']:.3f} best {m['lpips_best']:.3f}  PSNR avg {m['psnr_avg']:.2f} dB"
        if "label_accuracy" in m:
            line += f"  labels {m['label_accuracy']:.0%}"
    console.print(line, highlight=False)
    if "verdict" in m:
        counts = ", ".join(f"{n} {level}" for level, n in m["verdict_counts"].items() if n)
        console.print(f"  verdict: [bold]{m['verdict']}[/bold] ({counts}; scored against {m.get('scored_against', 'the private images')})",
                      highlight=False)
        for i, v in enumerate(m["verdicts"]):
            d = v["metrics"][v["decided_by"]]
            console.print(f"    image {i}: {v['verdict']} by {v['decided_by']} {d['distance']:.3f} "
                          f"(its real image's nearest neighbour {d['nearest_other']:.3f}, content-free guess {d['guess']:.3f})",
                          highlight=False)
    elif "verdict_note" in m:
        console.print(f"  verdict: none ({m['verdict_note']})", highlight=False)


def _cmd_experiment_list(args: argparse.Namespace, console: Console) -> None:
    table = Table(title="experiments")
    for col in ("name", "presets", "what"):
        table.add_column(col)
    for exp in list_experiments():
        table.add_row(exp.name, ", ".join(exp.presets), exp.description)
    console.print(table)


def _print_tables(console: Console, tables: list) -> None:
    for t in tables:
        console.print(to_markdown(t), markup=False, highlight=False)


def _cmd_experiment_run(args: argparse.Namespace, console: Console) -> None:
    try:
        outcome = run_experiment(args.name, args.preset, args.set or [], args.out or "runs",
                                 progress=lambda msg: console.print(msg, highlight=False), only=args.only,
                                 simulate=run_simulation)
    except (ExperimentError, DataError, ModelError) as exc:  # cells load data and models themselves
        raise UserError(str(exc)) from None
    _print_tables(console, outcome.tables)
    console.print(f"{outcome.ran} cells run, {outcome.cached} from cache; outputs in {outcome.out_dir}")


def _cmd_experiment_report(args: argparse.Namespace, console: Console) -> None:
    try:
        tables, _figures = report_experiment(args.run_dir)
    except ExperimentError as exc:
        raise UserError(str(exc)) from None
    _print_tables(console, tables)
    console.print(f"report: {Path(args.run_dir) / 'report.md'}")


def _statement_options(parser: argparse.ArgumentParser) -> None:
    """What a user states about an audited app, shared by ``audit`` and ``attack``."""
    parser.add_argument("--model", help="audited apps: the model factory, module:factory (needed to attack)")
    parser.add_argument("--input-shape", help="audited apps: the model's input C,H,W, e.g. 1,28,28")
    parser.add_argument("--input-mean", help="audited apps: the normalisation mean the app's data pipeline applies, "
                                             "one value or one per channel, e.g. 0.1307 (with --input-std)")
    parser.add_argument("--input-std", help="audited apps: the normalisation standard deviation, e.g. 0.3081")
    parser.add_argument("--input-transform", help="audited apps: the app's input transform as a differentiable "
                                                  "module:fn (images in [0, 1] -> model input), instead of mean/std")
    parser.add_argument("--recipe", help="audited apps: the clients' local training, 'key=value ...' with keys "
                                         "optimizer=sgd|adam|adamw lr momentum dampening nesterov weight_decay betas "
                                         "eps epochs batch_size drop_last max_steps local_steps (default: plain SGD)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fl-sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a federated simulation with the traffic tap")
    run.add_argument("--config", help=f"TOML file (default: app/configs/{DEFAULT_CONFIG.name}, a plain run)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help=f"the main job (app/configs/{DEMO_CONFIG.name}): an eavesdropper attacks two "
                                       "clients while they train, one of them defended; ends with RUN_DIR/report.html")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    demo.set_defaults(func=_cmd_demo)

    audit = sub.add_parser("audit", help="run an existing, unmodified Flower app under the tap")
    audit.add_argument("app", help="Flower app directory (pyproject.toml with [tool.flwr.app]) or SERVERAPP module:attr")
    audit.add_argument("clientapp", nargs="?", help="CLIENTAPP module:attr, when APP is a ServerApp reference")
    audit.add_argument("--num-supernodes", type=int, help="simulated clients (default: the app's federation, else 2)")
    audit.add_argument("--run-config", help="overrides of the app's run config: 'key=value key2=value2'")
    audit.add_argument("--engine", default="ray", help="ray (default) or inline")
    audit.add_argument("--seed", type=int, default=0,
                       help="seeds the simulated node ids and torch, numpy and random in the driver and every client call")
    audit.add_argument("--out", help="parent folder of the run directory (default: runs)")
    _statement_options(audit)
    audit.add_argument("--role", help="attack while the app runs: eavesdropper, curious-server, malicious-client")
    audit.add_argument("--preset", default=None, help=f"attack preset for --role (default: {AUDIT_PRESET}, or audit-adam when --recipe states optimizer=adam)")
    audit.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="attack.<key> / threat.<key> for --role; tap.keep_* and tap.spool_rounds: what the audit keeps "
                            "of the app's tensors (as in a run's config)")
    audit.set_defaults(func=_cmd_audit)

    attack = sub.add_parser(
        "attack", help="run a gradient inversion attack on intercepted updates",
        description="Attack captured client updates of a run directory (fl-sim's own runs and audits). Each attack "
                    "costs its iterations times about 0.02 s (LeNet, MNIST, batch 1) to 0.4 s (ResNet-18, CIFAR, "
                    "batch 1) per iteration on 2 CPU cores, times its restarts.")
    attack.add_argument("run_dir", help="a run directory of fl-sim run or fl-sim audit (holding traffic/ and deployment.json)")
    attack.add_argument("--preset", default=None,
                        help=f"{', '.join(PRESETS)} (default: inverting-gradients for fl-sim's runs; for audits "
                             f"{AUDIT_PRESET}, or audit-adam when --recipe states optimizer=adam or adamw)")
    attack.add_argument("--msg", type=int, help="the traffic-log id of a client update (see fl-sim traffic list)")
    attack.add_argument("--round", type=int, help="the server round whose client updates to attack (with --client or --all)")
    attack.add_argument("--client", type=int, help="client node id (see fl-sim traffic list)")
    attack.add_argument("--all", action="store_true", help="every captured client update of --round")
    attack.add_argument("--resume", action="store_true", help="run the attacks the run's adversary left pending")
    attack.add_argument("--decode", metavar="DECODERS",
                        help="MixUp/InstaHide: invert --client's updates of --rounds and decode the private images: "
                             "keyless (nothing granted), keys (the mixing keys, with threat.mixing_keys=true) or keyless,keys")
    attack.add_argument("--rounds", metavar="A-B", help="with --decode: the server rounds whose updates to gather (T epochs)")
    attack.add_argument("--epochs", type=int, help="with --decode: the passes over the client's data those updates cover "
                                                   "(sizes the keyless decode; else estimated)")
    attack.add_argument("--private-images", type=int, help="with --decode: the client's private images, where known")
    _statement_options(attack)
    attack.add_argument("--update-kind", choices=("weights", "delta", "gradient"),
                        help="audited apps: what clients send (default: weights, as Flower's strategies expect)")
    attack.add_argument("--client-data",
                        help="audited apps: module:fn(partition, num_partitions) -> images or (images, labels), in "
                             "[0, 1] and in the order the client trains on them: scores each reconstruction against "
                             "its nearest image there; with labels, also replays the recipe on the true batch")
    attack.add_argument("--app-root", help="audited apps: the directory to import --model, --input-transform and "
                                           "--client-data modules from")
    attack.add_argument("--device", default="auto",
                        help=f"where optimisation attacks run: {DEVICE_CHOICES} (default auto: the first GPU torch "
                             "sees, else the CPU); inputs are built and results scored on the CPU")
    attack.add_argument("--trust-run", action="store_true",
                        help="import the code the run directory names (its recorded model factory, input transform "
                             "and app root); without it only code named on this command line is imported")
    attack.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="attack.<key> (e.g. attack.iterations=500, attack.regularizers.tv.weight=0.1, "
                             "attack.labels=count-aware) or threat.<key>: labels=known|infer|unknown, "
                             "bn_stats=exact|proxy|infer|none, num_images (what an audited app's traffic does not "
                             "reveal: the images behind an update), local_steps, local_lr, local_batch_size, name "
                             "(a named threat model)")
    attack.set_defaults(func=_cmd_attack)

    experiment = sub.add_parser("experiment", help="the paper's tables and figures as resumable experiments")
    esub = experiment.add_subparsers(dest="experiment_command", required=True)
    el = esub.add_parser("list", help="list experiments and their presets")
    el.set_defaults(func=_cmd_experiment_list)
    er = esub.add_parser("run", help="run (or resume) an experiment")
    er.add_argument("name")
    er.add_argument("--preset", default="smoke")
    er.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset setting (repeatable)")
    er.add_argument("--out", help="parent folder (default: runs); results go to OUT/experiments/NAME-PRESET-HASH")
    er.add_argument("--only", action="append", metavar="GLOB",
                    help="run only the cells whose names match (repeatable), e.g. 'attack/strongest/b1/*'; "
                         "split a preset across machines, then merge with 'report'")
    er.set_defaults(func=_cmd_experiment_run)
    ep = esub.add_parser("report", help="re-render an experiment's tables and figures")
    ep.add_argument("run_dir")
    ep.set_defaults(func=_cmd_experiment_report)

    report = sub.add_parser("report", help="write RUN_DIR/report.html: what a run (or an audit) leaked, in one page")
    report.add_argument("run_dir", help="a run directory of fl-sim run or fl-sim audit")
    report.set_defaults(func=_cmd_report)

    traffic = sub.add_parser("traffic", help="inspect an intercepted traffic log")
    tsub = traffic.add_subparsers(dest="traffic_command", required=True)
    tl = tsub.add_parser("list", help="list intercepted messages")
    tl.add_argument("run_dir")
    tl.add_argument("--round", type=int)
    tl.add_argument("--client", type=int, help="node id of the client (either end of the link)")
    tl.add_argument("--direction", choices=("up", "down"))
    tl.set_defaults(func=_cmd_traffic_list)
    ts = tsub.add_parser("show", help="show one message: tensors, shapes, norms, metrics")
    ts.add_argument("run_dir")
    ts.add_argument("msg_id", type=int)
    ts.set_defaults(func=_cmd_traffic_show)
    te = tsub.add_parser("export", help="export one message's tensors as safetensors")
    te.add_argument("run_dir")
    te.add_argument("msg_id", type=int)
    te.add_argument("--out", required=True)
    te.set_defaults(func=_cmd_traffic_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_env()
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        code = args.func(args, console)
    except (ConfigError, UserError, TrafficLogError, GroundTruthError) as exc:  # each one line, naming the option or the file
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
