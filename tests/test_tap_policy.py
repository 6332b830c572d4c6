"""Tap policies: whose tensors stay on disk; metadata always; the adversary still sees everything it attacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adversary.jobs import JobBook
from adversary.tap_policy import TapPolicy
from adversary.traffic_log import OutgoingRecord, TrafficLog, TrafficLogError
from adversary.traffic_writer import TrafficWriter
from app.cli import main
from app.simulation import run_simulation
from fl_sim.config import TapConfig, load_config
from tests.test_roles import BASE


def _message(rnd: int, direction: str, node: int, fill: float, flower_id: str, reply_to: str | None = None) -> OutgoingRecord:
    return OutgoingRecord(
        round=rnd, direction=direction, src_node=node if direction == "up" else 1, dst_node=1 if direction == "up" else node,
        message_type="train", flower_id=flower_id, reply_to=reply_to, num_bytes=4096, sha256="", created_at=0.0,
        metrics={}, config={}, tensors={"arrays/w": np.full((32, 32), fill, np.float32)},
    )


def test_a_policy_keeps_metadata_of_all_tensors_of_some_and_what_attacks_name() -> None:
    policy = TapPolicy.from_config(TapConfig(keep_directions=["up"], keep_every=2), seed=0)
    assert [policy.keeps(_message(r, "up", 5, 0, "x")) for r in (1, 2, 3, 4)] == [True, False, True, False]
    assert not policy.keeps(_message(1, "down", 5, 0, "x"))
    sampled = TapPolicy.from_config(TapConfig(keep_clients=0.1), seed=3)
    share = np.mean([sampled.keeps_client(node) for node in range(20_000)])
    assert abs(share - 0.1) < 3 * np.sqrt(0.1 * 0.9 / 20_000)  # a fair seeded sample
    assert [sampled.keeps_client(n) for n in range(50)] == [sampled.keeps_client(n) for n in range(50)]
    other = TapPolicy.from_config(TapConfig(keep_clients=0.1), seed=4)
    assert [sampled.keeps_client(n) for n in range(200)] != [other.keeps_client(n) for n in range(200)]


def test_tensors_not_kept_are_readable_for_a_round_then_gone_unless_an_attack_names_them(tmp_path: Path) -> None:
    """Uploads of round 2 and downs are not kept; one round-2 upload is attacked: it and its instruction stay."""
    pins: set[int] = set()
    keep = TapPolicy.from_config(TapConfig(keep_directions=["up"], keep_rounds=[1, 3]), seed=0).keeps
    writer = TrafficWriter(tmp_path, keep=keep, pinned=lambda: pins, spool_rounds=1)
    ids: dict[tuple[int, str, int], int] = {}
    for rnd in (1, 2, 3, 4):
        for node in (7, 8):
            fid = f"i{rnd}-{node}"
            ids[(rnd, "down", node)] = writer.append(_message(rnd, "down", node, rnd, fid))
            ids[(rnd, "up", node)] = writer.append(_message(rnd, "up", node, rnd * 10 + node, f"r{rnd}-{node}", fid))
        if rnd == 2:
            with TrafficLog.open(tmp_path) as log:  # the adversary reads round 2 while it happens
                assert log.arrays(ids[(2, "up", 8)])["arrays/w"][0, 0] == 28
                assert not log.message(ids[(2, "up", 8)]).kept
            pins.add(ids[(2, "up", 8)])  # an attack job names this update
        if rnd == 3:
            with TrafficLog.open(tmp_path) as log:  # round 3 began: round 1's spool is settled, round 2's still there
                assert log.arrays(ids[(2, "up", 7)])["arrays/w"][0, 0] == 27
                with pytest.raises(TrafficLogError, match="not kept"):
                    log.arrays(ids[(1, "down", 7)])
    writer.close()
    with TrafficLog.open(tmp_path) as log:
        assert len(log) == 16 and all(m.tensors and m.tensors[0].l2 > 0 and len(m.sha256) == 64 for m in log.messages())
        assert log.arrays(ids[(1, "up", 7)])["arrays/w"][0, 0] == 17  # kept by the policy
        assert log.arrays(ids[(2, "up", 8)])["arrays/w"][0, 0] == 28  # named by an attack
        assert log.arrays(ids[(2, "down", 8)])["arrays/w"][0, 0] == 2  # the instruction it answers
        assert log.message(ids[(2, "up", 8)]).kept and log.message(ids[(2, "down", 8)]).kept
        for gone in ((2, "up", 7), (4, "up", 8), (4, "down", 7)):
            with pytest.raises(TrafficLogError, match=f"MSG_ID: message {ids[gone]}'s tensors were not kept"):
                log.arrays(ids[gone])
    blobs = sorted(p.name for p in (tmp_path / "traffic" / "blobs").iterdir())
    assert blobs == ["pack-000001.bin"]  # no spool left behind
    kept_uploads = 4 + 1  # rounds 1 and 3, both clients; and the attacked one
    assert (tmp_path / "traffic" / "blobs" / "pack-000001.bin").stat().st_size == (kept_uploads + 1) * 32 * 32 * 4


def test_a_reader_whose_spool_moves_under_it_reads_the_tensors_from_their_pack(tmp_path: Path) -> None:
    """The race an attack job can lose: it reads a spooled message's index rows, then the writer moves the
    pinned tensors into a pack and deletes the spool, then the job opens the spool. It reads them again
    where the index now says."""
    pins: set[int] = set()
    writer = TrafficWriter(tmp_path, keep=lambda meta: False, pinned=lambda: pins, spool_rounds=5)
    down = writer.append(_message(1, "down", 7, 1, "i1-7"))
    up = writer.append(_message(1, "up", 7, 17, "r1-7", "i1-7"))
    pins.add(up)
    with TrafficLog.open(tmp_path) as log:
        assert not log.message(up).kept
        original = log._packs.read
        moved = []

        def read_after_the_move(*args: object) -> bytearray:
            if not moved:  # between the index read and the file's: the writer settles round 1's spool
                moved.append(writer.call_after(lambda: writer._release(1)).result())
            return original(*args)

        log._packs.read = read_after_the_move
        assert log.arrays(up)["arrays/w"][0, 0] == 17
        assert moved and log.message(up).kept and log.message(down).kept
    writer.close()


def test_an_eavesdropper_attacks_every_update_it_taps_though_the_log_keeps_no_upload(tiny) -> None:
    cfg = tiny(*BASE, "adversary.role=eavesdropper", "adversary.attack.iterations=5", 'tap.keep_directions=["down"]')
    out = run_simulation(cfg)
    jobs = JobBook(out.run_dir).jobs()
    assert len(jobs) == 3 and {j.state for j in jobs} == {"done"}, [(j.state, j.error) for j in jobs]
    attacked = {m for j in jobs for m in j.target.messages}
    with TrafficLog.open(out.run_dir) as log:
        ups = [m for m in log.messages(direction="up", message_type="train")]
        assert len(ups) == 9 and {m.id for m in ups if m.kept} == attacked
        for m in ups:
            assert m.tensors and m.num_bytes > 0
            if m.id not in attacked:
                with pytest.raises(TrafficLogError, match="not kept"):
                    log.arrays(m.id)
    assert not list((out.run_dir / "traffic" / "blobs").glob("spool-*"))


@pytest.mark.parametrize(("setting", "needle"), [
    ('tap.keep_message_types=["upload"]', "tap.keep_message_types: must name message types among train"),
    ('tap.keep_directions=["sideways"]', "tap.keep_directions"),
    ("tap.keep_clients=1.5", "tap.keep_clients"),
    ("tap.keep_every=0", "tap.keep_every"),
    ("tap.keep_rounds=[-1]", "tap.keep_rounds: must list rounds >= 0"),
    ("tap.spool_rounds=-1", "tap.spool_rounds"),
])
def test_a_bad_policy_is_one_line(setting: str, needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--set", f"out_dir={tmp_path}", "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.iterdir())


def test_the_policy_is_part_of_the_resolved_config() -> None:
    cfg = load_config(None, ["tap.keep_clients=0.25", "tap.keep_every=10"])
    assert cfg.tap.keep_clients == 0.25 and not cfg.tap.keeps_everything and load_config(None, []).tap.keeps_everything


def test_a_decoding_role_needs_the_spool_to_cover_the_run() -> None:
    from app.simulation import validate_adversary
    from fl_sim.config import ConfigError

    settings = ["adversary.role=eavesdropper", 'adversary.options={decode="keyless",gather=2}', "federation.rounds=4",
                "tap.keep_clients=0.5"]
    with pytest.raises(ConfigError, match=r"tap.spool_rounds: a decoding role .* federation.rounds \(4\)"):
        validate_adversary(load_config(None, settings))
    validate_adversary(load_config(None, [*settings[:3]]))  # everything kept: nothing to drop
