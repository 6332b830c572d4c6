"""Threat models in one vocabulary, typed in the run config; the public deployment card of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adversary.attacks import ThreatModel, check_grants
from adversary.methods import build_method
from app.cli import main
from app.simulation import run_simulation
from fl_sim.config import ConfigError, load_config
from fl_sim.deployment import DEPLOYMENT_JSON, DeploymentCardError, load_card
from fl_sim.task import load_task
from fl_sim.threat import NAMED_THREAT_MODELS, Capability, ThreatModelError, resolve_threat_model, threat_settings

REVEALED = {"num_images": 4, "local_steps": 1, "local_lr": 0.05, "local_batch_size": 4}


def test_a_named_threat_model_grants_its_knowledge_and_single_choices_win() -> None:
    defaults = {"labels": "known", "bn_stats": "exact", **REVEALED}
    realistic = resolve_threat_model(defaults, {"name": "realistic"})
    assert (realistic.name, realistic.labels, realistic.bn_stats, realistic.num_images) == ("realistic", "known", "none", 4)
    chosen = resolve_threat_model(defaults, {"name": "realistic", "labels": "infer"})
    assert chosen.labels == "infer" and chosen.bn_stats == "none"
    assert resolve_threat_model(defaults, {}).bn_stats == "exact"  # no name: the observation's defaults


def test_every_named_threat_model_is_a_valid_threat_model() -> None:
    for name in NAMED_THREAT_MODELS:
        model = resolve_threat_model(REVEALED, {"name": name})
        assert model.name == name
    server = resolve_threat_model(REVEALED, {"name": "malicious-server"})
    assert server.grants(Capability.WEIGHTS_CONTROL) and not server.grants(Capability.ARCHITECTURE_CONTROL)
    assert server.grants(Capability.PUBLIC_DATA) and not server.grants(Capability.KNOWN_LABELS)


def test_knowledge_and_control_are_checked_the_same_way() -> None:
    eavesdropper = resolve_threat_model(REVEALED, {"name": "eavesdropper"})
    with pytest.raises(ThreatModelError, match="label strategy 'known' needs threat_model.labels='known'"):
        check_grants(build_method("inverting-gradients").attack.components(), eavesdropper)
    with pytest.raises(ThreatModelError, match="attack 'trap-weights' needs weights control"):
        check_grants([build_method("trap-weights")], eavesdropper)


@pytest.mark.parametrize(
    ("choices", "expected"),
    [
        ({"name": "spy"}, "threat_model.name: unknown threat model 'spy'; choose one of: strongest"),
        ({"labels": "maybe"}, "threat_model.labels: 'maybe' is not one of known, infer, unknown"),
        ({"control": "total"}, "threat_model.control: 'total' is not one of none, weights, architecture"),
        ({"num_images": 0}, "threat_model.num_images: must be >= 1, got 0"),
        ({"colour": 1}, "threat.colour: unknown key"),
    ],
)
def test_bad_threat_choices_are_one_line(choices: dict, expected: str) -> None:
    with pytest.raises(ThreatModelError) as err:
        threat_settings(choices)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("adversary.threat.name=spy", "adversary.threat.name: unknown threat model 'spy'"),
        ("adversary.threat.labels=maybe", "adversary.threat.labels: 'maybe' is not one of"),
        ("adversary.attack.iterations=-1", "adversary.attack.iterations: must be an integer >= 1, got -1"),
        ("adversary.attack.restarts=0", "adversary.attack.restarts: must be an integer >= 1, got 0"),
        ("adversary.preset=nope", "adversary.preset: unknown preset 'nope'"),
        ("adversary.attack={iters=3}", "adversary.attack: unknown attack key 'iters'"),
    ],
)
def test_adversary_settings_are_validated_when_the_config_loads(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["adversary.role=eavesdropper", override])
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_typed_threat_settings_keep_only_what_was_chosen() -> None:
    config = load_config(None, ["adversary.role=eavesdropper", 'adversary.threat={name="realistic", num_images=2}'])
    assert config.adversary.threat.chosen() == {"name": "realistic", "num_images": 2}
    assert config.to_dict()["adversary"]["threat"]["labels"] is None  # unset: from the name or the traffic


def test_each_run_writes_the_public_deployment_card(tiny) -> None:
    config = tiny("federation.protocol=fedavg", "federation.upload=delta", "federation.local_steps=2",
                  'defenses=[{name="instahide", k=2}]')
    run_dir = run_simulation(config, quiet=True).run_dir
    card = load_card(run_dir)
    data = load_task(config).dataset
    assert card.origin == "simulation" and card.model.name == "convnet" and card.model.options == {"width": 8}
    assert card.model.input_shape == data.input_shape and card.model.num_classes == data.num_classes
    assert card.model.mean == pytest.approx(data.mean) and card.model.std == pytest.approx(data.std)
    assert (card.protocol, card.upload, card.update_kind, card.fedbn) == ("fedavg", "delta", "delta", True)
    assert (card.recipe.lr, card.recipe.local_steps, card.recipe.batch_size) == (0.05, 2, 8)
    assert card.encoder == "instahide" and card.sign_center == pytest.approx(data.mean)  # flips around the mean
    assert list(card.shared_keys) == load_task(config).shared_keys(load_task(config).new_model())
    assert "partitions" not in json.loads((run_dir / DEPLOYMENT_JSON).read_text())  # nothing private on it
    rebuilt = card.model.build()
    assert list(rebuilt.state_dict()) == list(load_task(config).new_model().state_dict())


def test_a_missing_or_broken_card_is_one_clear_line(tiny, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run_simulation(tiny("federation.protocol=fedsgd"), quiet=True).run_dir
    (run_dir / DEPLOYMENT_JSON).write_text('{"model": 3}')
    with pytest.raises(DeploymentCardError, match="is not a valid deployment card"):
        load_card(run_dir)
    (run_dir / DEPLOYMENT_JSON).unlink()
    capsys.readouterr()
    assert main(["attack", str(run_dir), "--round", "1", "--all", "--set", "attack.iterations=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no deployment card" in err and len(err.splitlines()) == 1


def test_threat_model_is_a_typed_model() -> None:
    with pytest.raises(ThreatModelError, match="threat_model.local_steps: must be >= 1"):
        ThreatModel(local_steps=0)
    assert ThreatModel(num_images=3).model_dump()["num_images"] == 3


def test_the_job_book_keeps_the_threat_choices_as_written(tiny, tmp_path: Path) -> None:
    from adversary.jobs import JobBook

    config = tiny("federation.protocol=fedsgd", "adversary.role=eavesdropper", "adversary.attack.iterations=2",
                  'adversary.threat={name="realistic"}', "adversary.max_attacks=1")
    run_dir = run_simulation(config, quiet=True).run_dir
    (job,) = JobBook(run_dir).jobs()
    assert job.threat == {"name": "realistic"} and job.state == "done"
    attack = json.loads((Path(job.out_dir) / "attack.json").read_text())
    assert attack["threat_model"]["name"] == "realistic" and attack["threat_model"]["bn_stats"] == "none"
