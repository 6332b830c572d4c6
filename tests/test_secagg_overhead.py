"""SecAgg+'s client-side cost: the client runs the real protocol alone, and what it pays grows with its neighbours."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract, parameters_mod
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen, share_keys_plaintext_separate
from flwr.common import FitIns
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from clients.overhead import _as_the_server, measure_overhead
from clients.runtime import ClientRuntime
from clients.secagg import legacy_client_app
from clients.secagg_peers import protocol_sizes, run_client_round
from fl_sim.wire import SERVER_ROUND
from tests.conftest import tiny_config

SECAGG = ("federation.secagg=true", "federation.upload=delta", "secagg.clipping_range=1.0", "federation.protocol=fedavg",
          "federation.local_steps=2")


def _fit(runtime: ClientRuntime) -> RecordDict:
    shared = runtime.task.shared_keys(runtime.model)
    arrays = [runtime.initial[k].numpy() for k in shared]
    return compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), {SERVER_ROUND: 1}), keep_input=True)


def _context() -> Context:
    return Context(run_id=0, node_id=5, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(), run_config={})


def _client_seed(done, shares: list[bytes]) -> bytes:
    """The client's private-mask seed, rebuilt from the shares it encrypted for its peers (as the peers would)."""
    dsts = list(done.share_keys.config_records[RECORD_KEY_CONFIGS][Key.DESTINATION_LIST])
    texts = list(done.share_keys.config_records[RECORD_KEY_CONFIGS][Key.CIPHERTEXT_LIST])
    by_id = {p.node_id: p for p in done.peers}
    for dst, text in zip(dsts, texts):
        peer = by_id[dst]
        key = generate_shared_key(bytes_to_private_key(peer.sk2), bytes_to_public_key(done.pk2))
        src, to, seed_share, _ = share_keys_plaintext_separate(decrypt(key, text))
        assert (src, to) == (done.node_id, dst)
        shares.append(seed_share)
    return combine_shares(shares[: done.sizes.threshold])


def test_the_client_alone_runs_the_real_protocol_and_its_masks_come_off(tmp_path) -> None:
    cfg = tiny_config(tmp_path, *SECAGG)
    runtime = ClientRuntime(cfg.updated(tap={"enabled": False, "ground_truth": False}), None)
    with _as_the_server():
        plain = legacy_client_app(lambda: runtime, secure=False)(
            Message(content=_fit(runtime), dst_node_id=5, message_type=MessageType.TRAIN, group_id="1"), _context())
        secure, context = legacy_client_app(lambda: runtime, secure=True), _context()
        done = run_client_round(lambda message: secure(message, context), 5, _fit(runtime), cfg)
    update = compat.recorddict_to_fitres(plain.content, keep_input=True)
    weight = update.num_examples / cfg.secagg_max_weight
    plain_arrays = [bytes_to_ndarray(t) for t in update.parameters.tensors]

    configs = done.masked.content.config_records[RECORD_KEY_CONFIGS]
    masked = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
    assert not done.masked.content.array_records or all(not r for r in done.masked.content.array_records.values())
    unmask = done.unmask.config_records[RECORD_KEY_CONFIGS]
    own = [s for nid, s in zip(unmask[Key.NODE_ID_LIST], unmask[Key.SHARE_LIST]) if nid == done.node_id]
    sa, shapes = cfg.secagg, [a.shape for a in masked]
    vector = [m - p for m, p in zip(masked, pseudo_rand_gen(_client_seed(done, own), sa.modulus_range, shapes))]
    for peer in done.peers:  # the pairwise masks cancel against the peers' (the client's id is the smallest)
        key = generate_shared_key(bytes_to_private_key(peer.sk1), bytes_to_public_key(done.pk1))
        vector = [v + m for v, m in zip(vector, pseudo_rand_gen(key, sa.modulus_range, shapes))]
    q_ratio, quantized = factor_extract(parameters_mod(vector, sa.modulus_range))
    recovered = [a * sa.quantization_range / q_ratio for a in dequantize(quantized, sa.clipping_range, sa.quantization_range)]
    step = 2 * sa.clipping_range / sa.quantization_range
    assert len(recovered) == len(plain_arrays) > 1
    for got, want in zip(recovered, plain_arrays):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2 * step / weight)
    assert max(float(np.abs(a).max()) for a in plain_arrays) > 100 * step  # a real update, not zeros


def test_secagg_costs_the_client_more_with_more_neighbours(tmp_path) -> None:
    base = ("federation.num_clients=9", "federation.clients_per_round=9", *SECAGG)
    few = tiny_config(tmp_path, *base, "secagg.num_shares=3", "secagg.reconstruction_threshold=2")
    many = tiny_config(tmp_path, *base, "secagg.num_shares=9", "secagg.reconstruction_threshold=5")
    assert protocol_sizes(few).shares == 3 and protocol_sizes(many).shares == 9
    cheap = measure_overhead(few, pairs=5, warmup=1)
    dear = measure_overhead(many, pairs=5, warmup=1)
    assert cheap.ratio > 1.05, cheap  # keys, shares and two masks are not free
    # eight key agreements, share ciphertexts and pairwise masks instead of two: the protocol's own seconds grow
    assert dear.defended_s - dear.plain_s > 1.4 * (cheap.defended_s - cheap.plain_s), (cheap, dear)
    assert cheap.examples_defended == cheap.examples_plain
