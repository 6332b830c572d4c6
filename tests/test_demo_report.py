"""The main job shows the adversary: the demo config attacks while it trains, `fl-sim report` writes a
page a person can look at, and the pieces behind them (defenses on some clients only, an eavesdropper
on named partitions, evaluation every k-th round, one line per finished attack, PSNR/SSIM levels)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from adversary.feed import JobFeed, attack_line, running_lines
from adversary.jobs import JobBook
from adversary.roles import AttackTarget, RoleContext, RoleError, build_role
from adversary.traffic_log import TrafficLog
from adversary.verdict import Judge
from app.cli import DEMO_CONFIG, main
from app.report import read_run, summary_lines
from app.simulation import run_simulation
from clients.defenses import build_defenses
from fl_sim.config import ConfigError, load_config
from fl_sim.data import load_dataset
from fl_sim.node_ids import node_ids_for
from fl_sim.rundir import CONFIG_JSON, METRICS_JSONL
from fl_sim.task import load_task
from tests.browser import chromium, needs_chromium

# The demo config as `make demo` runs it, shortened: 6 rounds, both links attacked in rounds 1 and 6 with
# 200 iterations instead of 100 rounds and 500 iterations.
SHORT_DEMO = ["federation.rounds=6", "eval.every=3", "adversary.options.rounds=[1, 6]",
              "adversary.attack.iterations=200", "data.max_test=300"]
GRADPRUNE = "gradprune p=0.99"


def _set(args: list[str]) -> list[str]:
    return [a for kv in args for a in ("--set", kv)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        assert main(["demo", *_set([*SHORT_DEMO, f"out_dir={out}"])]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir, err.getvalue() + std.getvalue()


# ---------------------------------------------------------------- the demo, shortened, end to end


def test_demo_attacks_while_training_and_reports_the_contrast(demo_run: tuple[Path, str]) -> None:
    run_dir, output = demo_run
    facts = read_run(run_dir)
    config = facts.config
    assert config is not None and config.adversary.role == "eavesdropper" and config.engine.name == "ray"
    nodes = node_ids_for(config.seed, config.federation.num_clients)
    # four attacks, two per tapped link, each scored with a verdict against the private batch
    assert len(facts.attacks) == 4 and not facts.unfinished and not facts.failed
    by_partition = {p: [a for a in facts.attacks if a.metrics["client_node"] == nodes[p]] for p in (0, 1)}
    assert [len(v) for v in by_partition.values()] == [2, 2]
    undefended = [a.metrics for a in by_partition[0]]
    defended = [a.metrics for a in by_partition[1]]
    assert all(m["verdict"] == "recognised" for m in undefended), [m["verdict_counts"] for m in undefended]
    assert all(m["lpips_avg"] < 0.1 for m in undefended), [m["lpips_avg"] for m in undefended]
    assert all(m["verdict_counts"]["recognised"] == 0 for m in defended), [m["verdict_counts"] for m in defended]
    assert all(m["lpips_avg"] > 0.15 for m in defended), [m["lpips_avg"] for m in defended]
    # the summary is computed from those results
    lines = summary_lines(facts)
    assert lines[0].startswith("2 of 4 attacked updates leaked recognisable images")
    assert any(line.startswith(f"The client with {GRADPRUNE}") and "leaked no recognisable image" in line for line in lines)
    assert any(line.startswith("The undefended client") and "leaked recognisable images in 2 of its 2" in line
               for line in lines)
    # the terminal told the story: a line per finished attack, the summary, the report's path
    finished = re.findall(r"^attack \d+ \(round (\d+), client (\d+) \(partition (\d), ([^)]+)\)\): (\S+ ?\S*) \(", output, re.M)
    assert sorted((int(r), int(p)) for r, _n, p, _d, _v in finished) == [(1, 0), (1, 1), (6, 0), (6, 1)]
    assert all(d == (GRADPRUNE if p == "1" else "no defense") for _r, _n, p, d, _v in finished)
    assert lines[0] in output and f"report: {run_dir / 'report.html'}" in output


def test_only_the_named_partition_prunes_its_updates(demo_run: tuple[Path, str]) -> None:
    run_dir, _ = demo_run
    nodes = node_ids_for(0, 4)
    with TrafficLog.open(run_dir) as log:
        updates = log.messages(direction="up", message_type="train", round=1)
        zeros = {m.src_node: np.mean([float((a == 0).mean()) for a in log.arrays(m.id).values() if a.size > 1])
                 for m in updates}
    assert zeros[nodes[1]] >= 0.98  # GradPrune 0.99 per tensor (small tensors keep at least one entry)
    assert all(zeros[n] < 0.5 for n in nodes if n != nodes[1])


def test_eval_every_k_rounds_and_always_the_last(demo_run: tuple[Path, str]) -> None:
    run_dir, _ = demo_run
    rows = [json.loads(line) for line in (run_dir / METRICS_JSONL).read_text().splitlines()]
    assert [r["round"] for r in rows if r["eval_acc"] is not None] == [3, 6]
    assert all(r["train_loss"] is not None for r in rows)
    assert json.loads((run_dir / "summary.json").read_text())["final_accuracy"] == rows[-1]["eval_acc"]


def test_report_holds_config_curves_traffic_and_every_attack(demo_run: tuple[Path, str]) -> None:
    run_dir, _ = demo_run
    page = (run_dir / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained, inert
    summary = re.search(r'<div class="lead" id="summary">(.*?)</div>', page, re.S).group(1)
    assert "2 of 4 attacked updates leaked recognisable images" in summary and GRADPRUNE in summary
    for section in ('id="run"', 'id="training"', 'id="traffic"', "What ran", "eavesdropper", "gradprune p=0.99 on partition 1"):
        assert section in page, section
    # grids and loss curves of the 4 attacks, the training curves and the traffic chart, all embedded
    # grids (at a glance, then in each attack's section), loss curves, the training curves and the traffic chart
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) == 4 + 4 * 2 + 2
    assert page.count("<figcaption>private images (top) over their matched reconstructions") == 4
    glance = re.search(r'<section class="part" id="glance">(.*?)</section>', page, re.S).group(1)
    assert glance.count("<img") == 4
    assert len(re.findall(r"<figcaption>round \d+, client \d+ \(partition 1, gradprune p=0\.99\): (?:not recovered|partial) \(0 of 8", glance)) == 2
    for level in ("recognised (", "not recovered (", "LPIPS, matched", "PSNR dB", "SSIM", "labels recovered",
                  "labels=infer, bn_stats=none, num_images=8"):
        assert level in page, level
    assert (run_dir / "report" / "training.png").is_file() and (run_dir / "report" / "traffic.png").is_file()


@needs_chromium
def test_report_renders_in_headless_chromium_and_is_screenshotted(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    """Opens the report as a browser would; set FL_SIM_SCREENSHOT_OF (a report.html) and FL_SIM_SCREENSHOT_TO
    to screenshot another report, as docs/demo-report.png is made from a full `make demo`."""
    report = Path(os.environ.get("FL_SIM_SCREENSHOT_OF") or demo_run[0] / "report.html")
    probe = tmp_path / "probe.html"  # a copy with a script that writes what the browser loaded into the DOM
    check = ("<script>window.addEventListener('load', () => { document.body.dataset.images = JSON.stringify("
             "[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])); });</script>")
    probe.write_text(report.read_text().replace("</body>", check + "</body>"))
    done = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(re.search(r'data-images="([^"]*)"', done.stdout).group(1).replace("&quot;", '"'))
    assert len(loaded) >= 10 and all(ok and w > 0 and h > 0 for ok, w, h in loaded), loaded
    assert 'id="summary"' in done.stdout and "attacked updates leaked" in done.stdout
    shot = Path(os.environ.get("FL_SIM_SCREENSHOT_TO") or tmp_path / "report.png")
    done = chromium(f"--screenshot={shot}", "--window-size=1100,2700", "--hide-scrollbars", report.resolve().as_uri(),
                    profile=tmp_path / "profile-shot")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


# ---------------------------------------------------------------- fl-sim report on other run directories


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import tiny_config

    return run_simulation(tiny_config(tmp_path_factory.mktemp("plain")), quiet=True).run_dir


def _report(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["report", str(run_dir)]) == 0
    return capsys.readouterr().out


def test_report_on_a_run_without_attacks_says_so(plain_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _report(plain_run, capsys)
    assert "No attack has been run on this run's traffic (the run had no adversary)." in out
    page = (plain_run / "report.html").read_text()
    assert "No attack has been run" in page and 'id="training"' in page and "Attack:" not in page


def test_report_lists_pending_and_failed_attacks(plain_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(plain_run, run_dir)
    node = node_ids_for(0, 3)[2]
    book = JobBook(run_dir)
    pending = book.add("eavesdropper", AttackTarget("update", 2, (7,), client=node), "audit", {}, {})
    failed = book.add("eavesdropper", AttackTarget("update", 1, (3,), client=node), "audit", {}, {})
    book.mark(failed, "failed", error="RuntimeError: out of memory\nTraceback ...")
    book.close()
    out = _report(run_dir, capsys)
    assert "1 attack is still pending: fl-sim attack" in out and "--resume finishes them" in out
    assert "1 attack failed (first error: RuntimeError: out of memory)" in out
    page = (run_dir / "report.html").read_text()
    assert 'id="jobs"' in page and f"<td>{pending}</td><td>pending</td>" in page
    assert f"client {node} (partition 2, no defense)" in page and "Traceback" not in page


def test_report_reads_a_tampered_attacks_folder_as_data(plain_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(plain_run, run_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.json").write_text(json.dumps({"round": 1, "verdict": "recognised", "verdict_counts": {"recognised": 9}}))
    attacks = run_dir / "attacks"
    attacks.mkdir()
    (attacks / "linked").symlink_to(outside, target_is_directory=True)  # a link out of the run directory
    garbage = attacks / "r1-garbage"
    garbage.mkdir()
    (garbage / "metrics.json").write_bytes(b"\x80\x04\x95 not json")
    fake = attacks / "r1-fake-png"
    fake.mkdir()
    (fake / "metrics.json").write_text(json.dumps({"round": 1, "client_node": 5}))
    (fake / "grid.png").write_text("<svg onload=alert(1)>")
    out = _report(run_dir, capsys)
    page = (run_dir / "report.html").read_text()
    assert "recognised" not in out and "linked" not in page  # nothing read through the link
    assert "attacks/r1-garbage has no readable metrics.json; skipped" in page
    assert "r1-fake-png" in page and "onload" not in page and "data:image/svg" not in page


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "is not a directory"),
        (lambda d: d.mkdir(), "has no config.json"),
        (lambda d: (d.mkdir(), (d / CONFIG_JSON).write_bytes(b"\xff\xfe\x00garbage")), "config.json is not a readable config"),
        (lambda d: (d.mkdir(), (d / CONFIG_JSON).write_text("[1, 2]")), "is not a config (expected a JSON object)"),
        (lambda d: (d.mkdir(), (d / CONFIG_JSON).write_text('{"federation": {"rounds": 0}}')), "is not a valid run config"),
    ],
)
def test_report_on_a_bad_run_directory_is_one_line(setup, expected: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "bad"
    setup(run_dir)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RUN_DIR: ") and expected in err and err.count("\n") == 1, err
    assert not (run_dir / "report.html").exists()


# ---------------------------------------------------------------- the pieces


@pytest.mark.parametrize(
    ("defense", "expected"),
    [
        ('{name="gradprune", p=0.9, partitions=[4]}', r"defenses\[0\].partitions: indices must be < federation.num_clients \(4\)"),
        ('{name="gradprune", p=0.9, partitions=[-1]}', r"partitions: indices must be >= 0"),
        ('{name="gradprune", p=0.9, partitions=[]}', r"partitions: give at least one partition index"),
        ('{name="instahide", k=2, partitions=[0]}', r"partitions: a batch encoder is announced to the whole deployment"),
    ],
)
def test_defense_partitions_are_validated(defense: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(DEMO_CONFIG, [f"defenses=[{defense}]"])


def test_a_defense_applies_only_to_its_partitions() -> None:
    config = load_config(DEMO_CONFIG, ['defenses=[{name="dp", noise_multiplier=0.5}, {name="gradprune", p=0.9, partitions=[1, 3]}]'])
    task = load_task(config)
    ds = task.dataset
    defenses = build_defenses(config, input_shape=ds.input_shape, num_classes=ds.num_classes, model=task.new_model())
    for partition, names in ((0, ["dp"]), (1, ["dp", "gradprune"]), (2, ["dp"]), (3, ["dp", "gradprune"])):
        mine = defenses.for_round(seed=0, round=1, partition=partition)
        assert mine.defenses.names == names
        assert sorted(mine.rngs) == [0, 1][: len(names)]  # each keeps its own position's generator
    assert [d.label() for d in config.defenses] == ["dp noise_multiplier=0.5", "gradprune p=0.9"]


def test_eval_every_below_one_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--set", "eval.every=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: eval.every") and err.count("\n") == 1, err


def test_eval_every_is_refused_with_secagg() -> None:
    with pytest.raises(ConfigError, match="eval.every: the SecAgg"):
        load_config(DEMO_CONFIG, ["eval.every=5", "federation.secagg=true", "federation.protocol=fedavg",
                                  "adversary.role=none", "defenses=[]"])


def test_eavesdropper_taps_the_links_of_named_partitions() -> None:
    nodes = node_ids_for(0, 4)
    options = {"partitions": [2, 0]}
    role = build_role("eavesdropper", options, RoleContext.for_simulation(False, options, nodes))
    assert role.tapped == [nodes[2], nodes[0]] and role.fixed
    assert not hasattr(RoleContext.for_simulation(False, options, nodes), "node_of_partition")  # only its own links
    with pytest.raises(RoleError, match=r"adversary.options.partitions: no client with partition 7 \(have partitions 0-3\)"):
        build_role("eavesdropper", {"partitions": [7]}, RoleContext.for_simulation(False, {"partitions": [7]}, nodes))
    both = {"partitions": [1], "nodes": [nodes[0]]}
    with pytest.raises(RoleError, match="give nodes or partitions, not both"):
        build_role("eavesdropper", both, RoleContext.for_simulation(False, both, nodes))


def test_judge_gives_psnr_and_ssim_levels() -> None:
    images = load_dataset("mnist-5k").train_x[:40]
    refs = Judge(images).references()
    assert set(refs) == {"lpips", "correlation", "psnr", "ssim"}
    assert refs["psnr"]["unrelated_median"] > refs["psnr"]["noise_median"] + 2
    assert refs["ssim"]["unrelated_median"] > refs["ssim"]["noise_median"] + 0.1
    again = Judge(images).references()
    assert again == refs  # seeded


def test_job_feed_prints_each_finished_attack_once(tmp_path: Path) -> None:
    book = JobBook(tmp_path)
    done = book.add("eavesdropper", AttackTarget("update", 3, (11,), client=42), "audit", {}, {})
    failed = book.add("eavesdropper", AttackTarget("update", 4, (12,), client=42), "audit", {}, {})
    book.add("eavesdropper", AttackTarget("update", 5, (13,), client=42), "audit", {}, {})
    metrics = {"verdict": "recognised", "verdict_counts": {"not recovered": 1, "partial": 2, "recognised": 5},
               "lpips_avg": 0.0312, "timing": {"total_s": 31.4}}
    book.mark(done, "done", metrics=metrics)
    book.mark(failed, "failed", error="ValueError: bad shape\n  File ...")
    lines: list[str] = []
    feed = JobFeed(tmp_path, lines.append, describe=lambda node: f"client {node} (partition 0, no defense)")
    feed.poll()
    feed.poll()
    assert lines == [
        f"attack {done} (round 3, client 42 (partition 0, no defense)): recognised (5 of 8 images recognised, 2 partial), "
        "LPIPS 0.031, 31 s",
        f"attack {failed} (round 4, client 42 (partition 0, no defense)): failed: ValueError: bad shape",
    ]
    assert feed.unfinished() == 1
    job = next(j for j in book.jobs() if j.id == done)
    assert attack_line(job).startswith(f"attack {done} (round 3, client 42): recognised")
    book.close()


def test_running_lines_show_only_unfinished_attacks(tmp_path: Path) -> None:
    log = tmp_path / "attacks.log"
    log.write_text("\n".join([
        "2026-12-02 04:57:45 msg 8 round 1 audit: started, 500 iterations",
        "2026-12-02 04:57:45 msg 5 round 1 audit: started, 500 iterations",
        "2026-12-02 04:57:55 msg 8 round 1 audit: iteration 30/500 loss 0.088 10 s, about 157 s left",
        "2026-12-02 04:59:55 msg 5 round 1 audit: iteration 500/500 loss 0.8 130 s",
    ]) + "\n")
    assert running_lines(log) == ["  msg 8 round 1 audit: iteration 30/500 loss 0.088 10 s, about 157 s left"]
    assert running_lines(tmp_path / "missing.log") == []


def test_the_demo_config_is_the_documented_one() -> None:
    config = load_config(DEMO_CONFIG, [])
    fed, adv = config.federation, config.adversary
    assert (fed.protocol, fed.batch_size, fed.num_clients, fed.rounds) == ("fedsgd", 8, 4, 100)
    assert [(d.label(), d.partitions) for d in config.defenses] == [(GRADPRUNE, [1])]
    assert adv.role == "eavesdropper" and adv.options["partitions"] == [0, 1] and adv.wait
    assert adv.threat.chosen() == {"labels": "infer"}  # nothing granted that the traffic does not show
