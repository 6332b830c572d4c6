"""The decode job (adversary.decode_job): a MixUp client's updates over T epochs, really gradient-inverted,
then decoded without keys and with them; from the command line, from a role during the run.

Calibration (MNIST digits, ConvNet width 16, MixUp k=2, 6 private images, batch 1, 5 epochs: 30
FedSGD updates, huang-eq3 for MixUp at 150 iterations, seed 0; measured on this 2-core machine): the
inversions reach a mean PSNR of about 18 dB against the encodings they reconstruct (10 dB at worst).
Decoded with the keys, the 6 images come out at LPIPS 0.06 and all 6 are recognised; without keys
(told the 5 epochs) the cone-facet decode clusters better than chance and recovers 2-3 of the 6
recognisably, at LPIPS about 0.12 (0.20 when it has to estimate the count itself: it finds 3). The
floors below sit under those: a regression that stops the keyless decode from recovering anything
from real inversions fails here. The inverted encodings themselves, taken as candidates, score
LPIPS about 0.06: on MNIST a k=2 mix whose own coefficient is large already looks like its image,
which is why the decode's own verdicts, not only its LPIPS, are asserted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adversary.attacks import huang_eq3_for_defense
from adversary.decode import collect_encodings, estimate_private_images
from adversary.decode_job import run_decode_job
from adversary.evaluation import Evaluator
from adversary.jobs import JobBook
from adversary.observation import client_updates
from adversary.roles import AttackTarget, RoleContext, RoleError, build_role
from adversary.traffic_log import TrafficLog
from app.cli import main
from app.report.facts import read_run
from app.report.story import summary_lines
from app.simulation import run_simulation
from experiments.runner import run_experiment
from tests.conftest import tiny_config

PRIVATE, EPOCHS, K = 6, 5, 2
RUN = ("federation.num_clients=1", "federation.protocol=fedsgd", "federation.batch_size=1",
       f"federation.rounds={PRIVATE * EPOCHS}", f"data.max_train={PRIVATE}", "data.max_test=64",
       "model.options.width=16", f"defenses=[{{name=\"mixup\",k={K}}}]")
GRANTS = {"labels": "known", "bn_stats": "exact", "mixing_keys": True}


@pytest.fixture(scope="module")
def mixup_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_simulation(tiny_config(tmp_path_factory.mktemp("decode"), *RUN), quiet=True).run_dir


def _updates(run_dir: Path) -> tuple[int, tuple[int, ...]]:
    with TrafficLog.open(run_dir) as log:
        found = client_updates(log)
    return found[0].src_node, tuple(m.id for m in found)


@pytest.fixture(scope="module")
def decoded(mixup_run: Path):
    node, updates = _updates(mixup_run)
    overrides = {**huang_eq3_for_defense("mixup"), "iterations": 150}
    target = AttackTarget("decode", None, updates, client=node, decode=("keyless", "keys"), epochs=EPOCHS)
    return run_decode_job(mixup_run, target, "huang-eq3", attack_overrides=overrides, threat=GRANTS)


def test_keyless_decode_recovers_private_images_from_really_inverted_encodings(decoded) -> None:
    m = decoded.metrics
    assert m["decoder"] == "keyless" and m["updates"] == PRIVATE * EPOCHS and m["encodings"] == PRIVATE * EPOCHS
    assert m["private_images_used"] == PRIVATE and m["private_images_source"] == "told: 5 epochs"
    assert m["private_images_true"] == PRIVATE and m["num_images"] == PRIVATE
    assert 12.0 < m["inversion"]["psnr_avg"] < 60.0  # real inversions: far from exact, far from noise
    assert m["threat_model"]["mixing_keys"] is False  # the keyless decode is stated without the keys
    # Quality floor (calibrated above): some private images recognisable, clusters above chance.
    recognised = m["verdict_counts"]["recognised"] + m["verdict_counts"]["partial"]
    assert recognised >= 2, m["verdict_counts"]
    assert m["lpips_avg"] < 0.2 and m["lpips_best"] < 0.08
    scored = m["clusters_scored"]
    assert scored["purity"] > scored["chance"] + 2 * scored["chance_std"]
    # Every cluster names the (message, row) encodings it groups.
    assert all(pair[0] in m["messages"] and pair[1] == 0 for c in m["clusters"] for pair in c)


def test_keyed_decode_is_the_upper_bound_of_the_same_inversions(decoded, mixup_run: Path) -> None:
    keys = decoded.metrics["decoders"]["keys"]
    keyless = decoded.metrics["decoders"]["keyless"]
    assert keys["identifiable"] == PRIVATE and keys["verdict_counts"]["recognised"] >= PRIVATE - 1
    assert keys["lpips_avg"] < 0.1 and keys["lpips_avg"] <= keyless["lpips_avg"]
    folder = mixup_run / "attacks" / keys["folder"]
    stated = json.loads((folder / "metrics.json").read_text())
    assert stated["threat_model"]["mixing_keys"] is True and stated["decoder"] == "keys"
    for name in ("grid.png", "encodings.png", "encodings.safetensors", "reconstruction.safetensors", "attack.json"):
        assert (folder / name).is_file() and (decoded.out_dir / name).is_file()


def test_the_run_report_counts_decode_jobs_as_such(decoded, mixup_run: Path) -> None:
    lines = summary_lines(read_run(mixup_run))
    assert "decode job" in lines[0] and "attacked update" not in lines[0], lines


def test_the_spectrum_estimates_the_private_count_of_exact_encodings(mixup_run: Path) -> None:
    node, updates = _updates(mixup_run)
    steps = []
    truth = Evaluator.open(mixup_run).truth
    with TrafficLog.open(mixup_run) as log:
        for msg in updates:
            steps.extend(truth.batch_for(log.message(msg).reply_to).steps)
    assert estimate_private_images(collect_encodings(steps).encodings, K) == PRIVATE


def test_decode_from_the_command_line(mixup_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node, _ = _updates(mixup_run)
    args = ["attack", str(mixup_run), "--decode", "keyless,keys", "--client", str(node), "--rounds", "1-12",
            "--epochs", "2", "--set", "attack.iterations=10", "--set", "threat.mixing_keys=true"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "12 updates (rounds 1-12) inverted" in out and "keyless: " in out and "keys: " in out
    assert "the inverted encodings themselves as candidates" in out
    assert main(args) == 0  # the same request again is the same job
    assert "attacked before with these settings" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "expected"), [
    (["--decode", "keys", "--rounds", "1-3"], "threat.mixing_keys: decode keys needs the mixing keys granted"),
    (["--decode", "magic", "--rounds", "1-3"], "--decode: 'magic' is not a decoder; choose from keyless, keys"),
    (["--decode", "keyless"], "--rounds: give the rounds"),
    (["--decode", "keyless", "--rounds", "x"], "--rounds: expected A-B"),
    (["--decode", "keyless", "--rounds", "400-500"], "no captured update of node"),
    (["--decode", "keyless", "--rounds", "1-3", "--epochs", "0"], "--epochs: must be a whole number >= 1"),
    (["--decode", "keyless", "--rounds", "1-3", "--private-images", "-2"], "--private-images: must be a whole number >= 1"),
    (["--round", "1", "--epochs", "2"], "--decode: --rounds, --epochs and --private-images are for decoding"),
])
def test_decode_requests_that_cannot_be_met_are_one_line(mixup_run: Path, capsys: pytest.CaptureFixture[str],
                                                          extra: list[str], expected: str) -> None:
    node, _ = _updates(mixup_run)
    assert main(["attack", str(mixup_run), "--client", str(node), *extra, "--set", "attack.iterations=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_a_run_without_an_encoder_has_nothing_to_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run_simulation(tiny_config(tmp_path, "federation.num_clients=1", "federation.rounds=1"), quiet=True).run_dir
    node, _ = _updates(run_dir)
    assert main(["attack", str(run_dir), "--decode", "keyless", "--client", str(node), "--rounds", "1-1"]) == 2
    assert "runs no batch encoder" in capsys.readouterr().err
    assert not JobBook.exists(run_dir)  # a refused request leaves no job book behind


def test_an_eavesdropper_gathers_t_epochs_and_decodes_during_the_run(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, *RUN[:3], "federation.rounds=12", f"data.max_train={PRIVATE}", "model.options.width=8",
                      f"defenses=[{{name=\"mixup\",k={K}}}]", "adversary.role=eavesdropper",
                      "adversary.options={decode=\"keyless\",gather=12,epochs=2}", "adversary.attack.iterations=10")
    out = run_simulation(cfg, quiet=True)
    jobs = JobBook(out.run_dir).jobs()
    assert len(jobs) == 1 and jobs[0].state == "done", [(j.state, j.error) for j in jobs]
    assert jobs[0].target.kind == "decode" and len(jobs[0].target.messages) == 12
    metrics = jobs[0].metrics
    assert metrics["decoder"] == "keyless" and metrics["private_images_used"] == PRIVATE and "verdict_counts" in metrics


@pytest.mark.parametrize(("options", "expected"), [
    ({"decode": "keyless"}, "adversary.options.gather: give the number"),
    ({"decode": "brute", "gather": 4}, "adversary.options.decode: 'brute' is not a decoder"),
    ({"gather": 4}, "adversary.options.decode: gather, epochs and private_images need decode"),
    ({"decode": "keys", "gather": 0}, "adversary.options.gather: must be a whole number >= 1"),
    ({"decode": "keyless", "gather": 4, "epochs": "2"}, "adversary.options.epochs: must be a whole number >= 1"),
    ({"decode": "keyless", "gather": 4, "private_images": -1}, "adversary.options.private_images: must be a whole number"),
])
def test_decode_options_of_a_role_are_checked(options: dict, expected: str) -> None:
    with pytest.raises(RoleError, match=expected.replace("(", r"\(")):
        build_role("eavesdropper", options, RoleContext(placed=(1,), num_partitions=1))


def test_a_curious_server_cannot_decode_under_secure_aggregation() -> None:
    with pytest.raises(RoleError, match="under federation.secagg the server sees no client's own updates"):
        build_role("curious-server", {"decode": "keyless", "gather": 4}, RoleContext(secagg=True))


def test_a_decode_target_survives_the_job_book(tmp_path: Path) -> None:
    target = AttackTarget("decode", 9, (3, 5, 7), client=11, decode=("keyless", "keys"), epochs=3, private_images=None)
    assert AttackTarget.from_json(json.loads(json.dumps(target.to_json()))) == target
    other = AttackTarget("decode", 9, (3, 5, 7), client=11, decode=("keys",), epochs=3)
    assert target.key() != other.key()  # a different decoder is a different job
    book = JobBook(tmp_path)
    assert book.add("cli", target, "", {}, {}) is not None and book.add("cli", other, "", {}, {}) is not None
    assert book.jobs()[0].target == target


def test_the_epochs_sweep_runs_both_decoders_on_inverted_and_exact_encodings(tmp_path: Path) -> None:
    """The T sweep's own pipeline at a tiny scale (its smoke preset is hours of inversions; this is seconds):
    the exact encodings are the noise-free reference, where MixUp decodes exactly with and without keys."""
    tiny = ['encoders=["mixup"]', "ks=[2]", "epochs=[1,3]", "private=4", "attack.iterations=10"]
    outcome = run_experiment("decode_epochs", "smoke", tiny, tmp_path, simulate=run_simulation)
    table = outcome.tables[0]
    assert table.name == "decode_mixup_k2" and table.columns == ["", "T=1", "T=3"]
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["keys, exact encodings: exact (of 4)"][1] == 4 and rows["keyless, exact encodings: exact (of 4)"][1] == 4
    assert rows["keys, exact encodings: LPIPS avg"][1] < 0.01
    for label in ("keys, inverted encodings: LPIPS avg", "keyless, inverted encodings: LPIPS avg"):
        assert all(v is not None and 0 <= v <= 1.5 for v in rows[label])
    assert rows["keyless: private images estimated (true)"][1].endswith("(4)")
    assert (outcome.out_dir / "figures" / "decode_epochs.png").stat().st_size > 1000


def test_without_a_sidecar_the_keyless_decode_runs_unscored_and_keys_are_refused_first(tmp_path: Path,
                                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tmp_path, *RUN[:3], "federation.rounds=8", "data.max_train=4", f"defenses=[{{name=\"mixup\",k={K}}}]",
                      "tap.ground_truth=false")
    run_dir = run_simulation(cfg, quiet=True).run_dir
    node, _ = _updates(run_dir)
    base = ["attack", str(run_dir), "--client", str(node), "--rounds", "1-8", "--set", "attack.iterations=5",
            "--set", "threat.labels=infer", "--set", "threat.bn_stats=none"]
    assert main([*base, "--decode", "keys", "--set", "threat.mixing_keys=true"]) == 2
    assert "kept no ground-truth sidecar" in capsys.readouterr().err
    assert not (run_dir / "attacks").exists() or not any((run_dir / "attacks").iterdir())  # refused before inverting
    assert main([*base, "--decode", "keyless", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "keyless: " in out and "LPIPS" not in out.split("keyless: ")[1].splitlines()[0]  # nothing to score against


def test_a_tampered_card_naming_an_unknown_encoder_variant_is_one_line(mixup_run: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    node, _ = _updates(mixup_run)
    copy = tmp_path / "run"
    shutil.copytree(mixup_run, copy)
    card = json.loads((copy / "deployment.json").read_text())
    card["encoder_variant"] = "outer"
    (copy / "deployment.json").write_text(json.dumps(card))
    assert main(["attack", str(copy), "--decode", "keyless", "--client", str(node), "--rounds", "1-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "encoder_variant" in err and len(err.splitlines()) == 1
